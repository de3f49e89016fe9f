"""Checkpoints a run directory can trust: an always-current ``last.ckpt`` and crash-safe writes.

Lightning 2.6's ModelCheckpoint writes ``last.ckpt`` only in epochs where the monitored metric
improved, so resuming would silently go back to the best epoch; and its writer truncates the file in
place, so a kill mid-write leaves a broken checkpoint. :class:`BestAndLastCheckpoint` writes ``last``
after every validation (a hard link to ``best`` when both are the same step: one write, not two);
:class:`AtomicCheckpointIO` writes every checkpoint to a temp file, fsyncs and renames it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection

from aistudio.runs.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temp file in the same folder + fsync + rename: readers see old or new, never half.

    With ``background=True`` the tensors are copied on the caller's thread (a point-in-time snapshot)
    and written by one background thread, so training does not wait for the disk. Writes, links and
    removals run in submission order; :meth:`teardown` (end of fit/test) waits for all of them.
    """

    def __init__(self, background: bool = False):
        super().__init__()
        self.background = background
        self._executor: ThreadPoolExecutor | None = None
        self._error: BaseException | None = None

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        if not self.background:
            fn(*args)
            return
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer",
                                                initializer=_lowest_cpu_priority)

        def run() -> None:
            try:
                fn(*args)
            except BaseException as err:  # surfaced on the next call or at teardown
                self._error = err

        self._executor.submit(run)

    @staticmethod
    def _write(checkpoint: dict[str, Any], path: Path) -> None:
        atomic_write(path, lambda handle: torch.save(checkpoint, handle), mode="wb")

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if self.background:
            checkpoint = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().clone())
        self._submit(self._write, checkpoint, Path(path))

    def remove_checkpoint(self, path: Any) -> None:
        self._submit(super().remove_checkpoint, path)

    def link(self, source: str | Path, target: str | Path) -> None:
        """Make ``target`` the same file as ``source`` (after ``source``'s pending write)."""
        self._submit(replace_with_link, Path(source), Path(target))

    def teardown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _lowest_cpu_priority() -> None:
    """Run the writer thread at nice 19 (Linux schedules threads individually): training keeps the cores,
    the write fills idle moments (data waits, validation, epoch ends)."""
    import threading

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not permitted: plain priority is fine
        pass


def replace_with_link(source: str | Path, target: str | Path) -> None:
    """Make ``target`` a hard link to ``source``, atomically (falls back to a copy across devices)."""
    import shutil

    target = Path(target)
    tmp = target.with_name(f".{target.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


class BestAndLastCheckpoint(ModelCheckpoint):
    """``best.ckpt`` by the monitored metric and a ``last.ckpt`` that really is the latest epoch.

    ``save_on_tie``: an epoch that equals the best value replaces it. Accuracy on a small validation
    set ties often, and the later epoch has trained longer at a lower learning rate.
    """

    def __init__(self, *args: Any, save_on_tie: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.save_on_tie = save_on_tie

    def check_monitor_top_k(self, trainer: pl.Trainer, current: torch.Tensor | None = None) -> bool:
        if not self.save_on_tie or current is None or self.save_top_k == -1 \
                or len(self.best_k_models) < self.save_top_k:
            return super().check_monitor_top_k(trainer, current)
        op = {"min": torch.le, "max": torch.ge}[self.mode]
        decision = bool(op(current, self.best_k_models[self.kth_best_model_path]))
        return trainer.strategy.reduce_boolean_decision(decision)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        best = Path(self.best_model_path) if self.best_model_path else None
        same_step = self._last_global_step_saved == trainer.global_step and best is not None
        if (self.save_last is True and same_step
                and isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)):
            # the best checkpoint was just written for this very step: link instead of writing it again
            # (safe because AtomicCheckpointIO replaces files by rename, never rewriting a shared inode)
            filepath = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
            self.last_model_path = filepath
            if trainer.is_global_zero:
                trainer.strategy.checkpoint_io.link(best, filepath)
            trainer.strategy.barrier("last_checkpoint_link")
            return
        super()._save_last_checkpoint(trainer, monitor_candidates)

    def _ensure_last(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer) \
                and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer) and not trainer.sanity_checking:
            self._ensure_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)
