"""What a run prints: progress lines when no terminal shows a bar, and none of the libraries' noise (Lightning's second copy of each INFO line, its product tip, known
deprecations that are not the user's to fix)."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger("aistudio.train")

# warnings about library internals, not about the user's run (message regex, as `warnings` takes it)
LIBRARY_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's pytree use under torch >= 2.9
    r"The `srun` command is available on your system but is not used",  # we place SLURM jobs ourselves
    r"Got processor for bboxes, but no transform to process it",  # eval pipelines move no boxes: fine
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg) and not str(record.msg).startswith("💡 Tip")


def tidy_library_output() -> None:
    """Lightning adds its own stderr handler to the ``lightning`` logger while its records also reach
    the run's handlers (console + training.log): every INFO line came out twice. Drop its handler and
    its product tip, and silence warnings about library internals."""
    import lightning

    own = getattr(lightning, "_console", None)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if handler is own or type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in tips.filters):
        tips.addFilter(_DropTips())
    for message in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=message)


class PeriodicProgress(pl.Callback):
    """A progress line every ``interval_s`` seconds when no progress bar is shown (output to a file,
    SLURM): a large epoch is otherwise minutes of silence. Reads the loss at most once per line, so it
    adds no per-step host-device sync."""

    def __init__(self, interval_s: float = 30.0):
        self.interval_s = float(interval_s)
        self._phase_started = self._last_line = time.monotonic()
        self._images = 0

    def _start(self) -> None:
        self._phase_started = self._last_line = time.monotonic()
        self._images = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start()

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start()

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._batch_done(trainer, "train", batch, batch_idx, trainer.num_training_batches, outputs)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._batch_done(trainer, "val", batch, batch_idx, _total(trainer.num_val_batches, dataloader_idx))

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_done(trainer, "test", batch, batch_idx, _total(trainer.num_test_batches, dataloader_idx))

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_done(trainer, "predict", batch, batch_idx, _total(trainer.num_predict_batches, dataloader_idx))

    def _batch_done(self, trainer: pl.Trainer, phase: str, batch: Any, batch_idx: int, total: Any,
                    outputs: Any = None) -> None:
        self._images += _batch_size(batch)
        now = time.monotonic()
        if now - self._last_line < self.interval_s or not trainer.is_global_zero:
            return
        self._last_line = now
        done, elapsed = batch_idx + 1, now - self._phase_started
        known = isinstance(total, int) and total > 0
        where = f"{done}/{total} ({100 * done / total:.0f}%)" if known else f"{done}"
        epoch = "" if phase in ("test", "predict") else f"epoch {trainer.current_epoch} "
        parts = [f"{epoch}{phase} batch {where}", f"{self._images / elapsed:.1f} img/s"]
        if known and done < total:
            parts.append(f"ETA {_clock(elapsed / done * (total - done))}")
        loss = _loss(outputs)
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        log.info(" · ".join(parts))


def _total(counts: Any, index: int) -> Any:
    if isinstance(counts, (list, tuple)):
        return counts[index] if index < len(counts) else None
    return counts


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    try:
        return len(first)
    except TypeError:
        return 0


def _loss(outputs: Any) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    try:
        return float(loss) if loss is not None else None
    except (TypeError, ValueError, RuntimeError):
        return None


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
