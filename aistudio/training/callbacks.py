"""Callbacks that keep the standard run directory current while training.

:class:`RunDirectoryCallback` appends one entry per epoch to ``metrics.json`` (rewritten atomically),
updates ``run.json`` (epochs done, best metric, heartbeat) and stores the run config inside every
checkpoint. Only global rank 0 writes.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from aistudio.run_layout import METRICS_FILE
from aistudio.runs.atomic import atomic_write_json, read_json
from aistudio.runs.record import RunRecord, utc_now
from aistudio.training.speed import SpeedSettings

log = logging.getLogger("aistudio.train")



def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Tensor/number metrics -> floats; Lightning's ``*_step`` copies dropped, ``*_epoch`` names cleaned."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key.endswith("_step") or key.startswith("lr-"):  # lr is recorded per parameter group below
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        name = key[: -len("_epoch")] if key.endswith("_epoch") else key
        out[name] = number
    return dict(sorted(out.items()))


def is_better(value: float, best: float | None, mode: str, ties: bool = False) -> bool:
    """Whether ``value`` beats ``best``; with ``ties`` an equal value counts too (the later epoch wins)."""
    if value != value:  # NaN is never better
        return False
    if best is None or (ties and value == best):
        return True
    return value > best if mode == "max" else value < best


class RunDirectoryCallback(Callback):
    """metrics.json + run.json progress + the run config embedded in checkpoints."""

    def __init__(self, run_dir: str | Path, record: RunRecord | None, monitor: str, mode: str,
                 run_config: dict[str, Any] | None = None, best_on_tie: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.record = record
        self.monitor, self.mode = monitor, mode
        self.best_on_tie = best_on_tie  # same rule as the checkpoint callback's save_on_tie
        self.run_config = run_config or {}
        self.entries: list[dict[str, Any]] = []
        self._epoch_lr: dict[str, float] = {}
        self._epoch_started = time.monotonic()
        self._fit_started = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after a resumed checkpoint restored the loop: the trainer starts at the checkpoint's
        # epoch, so keep only the entries before it (no duplicate or missing epochs).
        previous = read_json(self.path, default=[]) or []
        self.entries = [e for e in previous if int(e.get("epoch", -1)) < trainer.current_epoch]
        self._fit_started = time.monotonic()
        speed = next((c.report(trainer) for c in trainer.callbacks if isinstance(c, SpeedSettings)), None)
        if self.record is not None and speed:  # what the hardware speed settings did, as measured
            self.record.update(speed=speed)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = time.monotonic()
        # the learning rate each parameter group starts the epoch with
        self._epoch_lr = {f"lr_{group.get('name', index)}": float(group["lr"])
                          for optimizer in trainer.optimizers
                          for index, group in enumerate(optimizer.param_groups)}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        entry: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                                 "time": utc_now(),
                                 "epoch_time_s": round(time.monotonic() - self._epoch_started, 3)}
        entry.update(scalar_metrics(trainer.callback_metrics))
        entry.update(self._epoch_lr)
        self.entries.append(entry)
        summary = " ".join(f"{k}={v:.4g}" for k, v in entry.items()
                           if isinstance(v, float) and k != "epoch_time_s" and not k.startswith("lr_"))
        log.info("epoch %d (%.1fs): %s", entry["epoch"], entry["epoch_time_s"], summary)
        if trainer.is_global_zero:
            atomic_write_json(self.path, self.entries, durable=False)  # atomic; the fsync waits for a status change
            self._update_record()

    def best_entry(self) -> dict[str, Any] | None:
        best = None
        for entry in self.entries:
            value = entry.get(self.monitor)
            if value is not None and is_better(value, best[self.monitor] if best else None, self.mode,
                                               self.best_on_tie):
                best = entry
        return best

    def _best_field(self, best: dict[str, Any] | None) -> dict[str, Any] | None:
        """run.json's ``best`` for a metrics.json entry."""
        return {"metric": self.monitor, "mode": self.mode, "value": best.get(self.monitor),
                "epoch": best["epoch"]} if best else None

    def _update_record(self) -> None:
        if self.record is None:
            return
        self.record.update(
            epochs_completed=len(self.entries),
            best=self._best_field(self.best_entry()),
            last_metrics=self.entries[-1] if self.entries else {},
            heartbeat_at=utc_now(),
        )

    def record_best_on_disk(self, epoch: int | None) -> None:
        """A checkpoint write failed: make run.json's ``best`` the epoch the best checkpoint on disk really
        holds (``None``: there is none), never one whose checkpoint was not written. Called by
        :class:`~aistudio.training.checkpoint.BestAndLastCheckpoint` before the run is marked failed."""
        if self.record is None:
            return
        entry = next((e for e in self.entries if epoch is not None and int(e.get("epoch", -1)) == epoch), None)
        if entry is None and epoch is not None:  # the entry is gone (metrics.json edited): the epoch is still true
            entry = {"epoch": epoch}
        if self._best_field(entry) != self.record.data.get("best"):
            log.warning("run.json best: epoch %s -> %s (the checkpoint on disk)",
                        (self.record.data.get("best") or {}).get("epoch"), epoch)
            self.record.update(best=self._best_field(entry))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint["aistudio"] = {"config": self.run_config, "class_names": getattr(pl_module, "class_names", []),
                                  "run_dir": str(self.run_dir), "epoch_lr": dict(self._epoch_lr)}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # a resume inside an epoch gets no on_train_epoch_start: that epoch's starting lr comes from here
        self._epoch_lr = dict((checkpoint.get("aistudio") or {}).get("epoch_lr") or {})


def progress_bar(kind: str = "auto", interval_s: float = 30.0) -> Callback | None:
    """Rich bar on a terminal; a progress line every ``interval_s`` seconds when output goes to a file
    (sweeps, SLURM), beside the per-epoch line. ``kind``: auto | rich | tqdm | log | none."""
    if kind == "auto":
        kind = "rich" if sys.stdout.isatty() else "log"
    if kind == "log":
        from aistudio.training.console import PeriodicProgress

        return PeriodicProgress(interval_s)
    if kind == "rich":
        from lightning.pytorch.callbacks import RichProgressBar

        return RichProgressBar()
    if kind == "tqdm":
        from lightning.pytorch.callbacks import TQDMProgressBar

        return TQDMProgressBar()
    return None
