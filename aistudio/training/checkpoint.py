"""Checkpoints a run directory can trust: an always-current ``last.ckpt`` and crash-safe writes.

Lightning 2.6's ModelCheckpoint writes ``last.ckpt`` only in epochs where the monitored metric
improved, so resuming would silently go back to the best epoch; and its writer truncates the file in
place, so a kill mid-write leaves a broken checkpoint. :class:`BestAndLastCheckpoint` writes ``last``
after every validation (a hard link to ``best`` when both are the same step: one write, not two);
:class:`AtomicCheckpointIO` writes every checkpoint to a temp file, fsyncs and renames it.

A failed write (a full disk, above all) is a :class:`CheckpointWriteError` naming the file and its size,
raised at the write, or — for a background write — before the next training step; the temp file is
removed, nothing queued after it is written, and run.json's ``best`` is set back to what ``best.ckpt``
really holds. :mod:`aistudio.runs.failures` turns it into one message that names the disk.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.serialization import config as serialization_config

from aistudio import AistudioError, exception_chain
from aistudio.runs.atomic import commit_temp, write_temp
from aistudio.training.checkpoint_spare import SpareFiles
from aistudio.training.checkpoint_staging import HostStaging, Snapshot
from aistudio.training.tensor_tree import tensor_bytes

log = logging.getLogger("aistudio.train")


class CheckpointWriteError(RuntimeError):
    """Writing (or linking) a checkpoint failed; the original error (e.g. torch's enforce-fail wrapping an
    ``OSError`` ENOSPC) is chained as the cause.

    ``checkpoint_path`` and ``needed_bytes`` (the checkpoint's approximate size) are what
    :func:`aistudio.runs.failures.explain_failure` quotes for a full disk.
    """

    def __init__(self, checkpoint_path: str | Path, needed_bytes: int | None, cause: BaseException | str):
        self.checkpoint_path = Path(checkpoint_path)
        self.needed_bytes = needed_bytes
        if isinstance(cause, BaseException):  # the OSError inside torch's wrapping says what happened
            reason = next((c for c in exception_chain(cause) if isinstance(c, OSError)), cause)
            cause = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
        self.reason = cause
        size = f" (about {needed_bytes / 1e6:.1f} MB)" if needed_bytes else ""
        super().__init__(f"writing checkpoint {self.checkpoint_path}{size} failed: {cause}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (the cause is not carried along)
        return (type(self), (str(self.checkpoint_path), self.needed_bytes, self.reason))


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temp file in the same folder + fsync + rename: readers see old or new, never half.

    Three ways to write (:data:`WRITE_MODES`, picked by :func:`write_mode` from ``background``):

    * ``background`` (``background=True``; "auto" when a GPU trains): the tensors are copied on the
      caller's thread (a point-in-time snapshot, into reused host buffers:
      :mod:`aistudio.training.checkpoint_staging`) and written by one background thread, so training does
      not wait for the disk while the host is otherwise idle;
    * ``commit_behind`` ("auto" when the CPU trains): the file is written on the caller's thread, and only
      its fsync and rename (waiting for the disk, no CPU work) are left to the background thread. A writer
      thread serialising beside CPU training takes cores from the training threads (each OpenMP barrier
      waits for the thread it preempted): 18% of a 2-core run's speed, against 5% for writing in line;
    * ``in_line`` (``background=False``): everything on the caller's thread.

    Writes, links and removals run in submission order; :meth:`teardown` (end of fit/test) waits for all of
    them. The file a write replaces is rewritten by the next write when nobody reads it any more
    (:mod:`aistudio.training.checkpoint_spare`: half the write's time on a VM).

    ``crc32``: whether torch.save computes a CRC-32 of every record of the file (a zip). Off by default:
    it is half of torch.save's time (ResNet-18 + momentum, 90 MB: 175 -> 84 ms on 2 CPU cores) and torch.load
    never checks it (a flipped byte loads without a word either way); a torn write cannot happen here
    (temp file, fsync, rename). On: for tools that verify zip CRCs (``unzip -t``).

    A failed write raises :class:`CheckpointWriteError` (its temp file removed). In the background, the
    writer then skips everything queued after it (no link to a stale file, no removal), and the error is
    raised by the next :meth:`check` (:class:`BestAndLastCheckpoint` calls it before every training step),
    the next write, or :meth:`teardown` — whichever comes first, and by every later write until teardown.
    """

    def __init__(self, background: bool | Literal["auto"] = False, crc32: bool = False):
        super().__init__()
        self.setting = background
        self.crc32 = crc32
        # the Trainer factory resolves "auto" for the run's accelerator (for_accelerator); until then, for
        # whether this machine has a GPU
        self.mode = write_mode(background, "gpu" if torch.cuda.is_available() else "cpu")
        self._executor: ThreadPoolExecutor | None = None
        self._staging = HostStaging()
        self._spares = SpareFiles()
        self._error: BaseException | None = None
        self._raised = False  # the error has reached the training thread (teardown must not raise it again)

    def for_accelerator(self, accelerator: str) -> AtomicCheckpointIO:
        """Resolve ``background="auto"`` for the accelerator the run trains on."""
        self.mode = write_mode(self.setting, accelerator)
        return self

    @property
    def background(self) -> bool:
        """Whether whole checkpoints are written by the background thread (snapshots in host buffers)."""
        return self.mode == "background"

    @property
    def failed(self) -> bool:
        """Whether a background write failed (and :meth:`teardown` has not reset it yet)."""
        return self._error is not None

    def wait(self) -> None:
        """Block until every write, link and removal submitted so far is done (a failure stays for :meth:`check`)."""
        if self._executor is not None:
            self._executor.submit(lambda: None).result()

    def check(self) -> None:
        """Raise the error of a failed background write, if there was one."""
        if self._error is not None:
            self._raised = True
            raise self._error

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self.mode == "in_line":
            fn(*args)
            return
        self.check()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer",
                                                initializer=_lowest_cpu_priority)

        def run() -> None:
            if self._error is not None:  # an earlier write failed: leave the files as they are
                return
            try:
                fn(*args)
            except BaseException as err:  # raised in the training thread by check(), the next call or teardown
                self._error = err

        self._executor.submit(run)

    def _write(self, checkpoint: dict[str, Any], path: Path, size: int | None = None) -> None:
        self._commit(self._write_temp(checkpoint, path, size), path, size)

    def _write_temp(self, checkpoint: dict[str, Any], path: Path, size: int | None = None) -> Path:
        def save(handle: Any) -> None:
            with _crc32(self.crc32):
                torch.save(checkpoint, handle)

        try:
            return write_temp(path, save, mode="wb", reuse=self._spares.take(path))
        except Exception as err:  # write_temp has removed the temp file
            # the size is worked out only now: walking the checkpoint costs every write a few ms
            raise CheckpointWriteError(path, size or tensor_bytes(checkpoint) or None, err) from err

    def _commit(self, tmp: Path, path: Path, size: int | None = None) -> None:
        try:
            size = size or tmp.stat().st_size  # the whole file is written: its exact size, for the error
            commit_temp(tmp, path, replace=self._spares.replace)
        except Exception as err:  # commit_temp has removed the temp file
            raise CheckpointWriteError(path, size or None, err) from err

    def _link(self, source: Path, target: Path) -> None:
        try:
            replace_with_link(source, target, replace=self._spares.replace)
        except Exception as err:
            size = source.stat().st_size if source.is_file() else None
            raise CheckpointWriteError(target, size, err) from err

    def _write_snapshot(self, snapshot: Snapshot, path: Path) -> None:
        try:
            self._write(snapshot.ready(), path, snapshot.size or None)
        finally:
            snapshot.release()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if self.background:
            self.check()  # a failed write stops here, before copying anything
            self._submit(self._write_snapshot, self._staging.snapshot(checkpoint, self.wait), Path(path))
            return
        if self.mode == "in_line":
            self._write(checkpoint, Path(path))
            return
        self.check()  # commit_behind: a failed commit stops here; serialise here, fsync + rename behind
        path = Path(path)
        self._submit(self._commit, self._write_temp(checkpoint, path), path)

    def remove_checkpoint(self, path: Any) -> None:
        self._submit(super().remove_checkpoint, path)

    def link(self, source: str | Path, target: str | Path) -> None:
        """Make ``target`` the same file as ``source`` (after ``source``'s pending write)."""
        self._submit(self._link, Path(source), Path(target))

    def teardown(self) -> None:
        """Wait for the pending writes; raise a failure the training thread has not seen yet. Resets the
        failure, so the same plugin can serve the next stage."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._staging.clear()
        self._spares.discard()
        error, raised = self._error, self._raised
        self._error, self._raised = None, False
        if error is not None and not raised:
            raise error


_CRC32_SETTING = threading.Lock()  # torch's switch is process-wide: one writer at a time sets and restores it


@contextmanager
def _crc32(enabled: bool) -> Iterator[None]:
    """torch.save computes zip CRC-32s (or not) inside this block; the process's own setting is restored."""
    with _CRC32_SETTING:
        before = serialization_config.save.compute_crc32
        serialization_config.save.compute_crc32 = enabled
        try:
            yield
        finally:
            serialization_config.save.compute_crc32 = before


WRITE_MODES = ("background", "commit_behind", "in_line")


def write_mode(setting: bool | str, accelerator: str) -> str:
    """The :data:`WRITE_MODES` entry of ``checkpoint_io.background``: true -> background, false -> in_line;
    "auto" -> background when a GPU (or another accelerator) trains, commit_behind when the CPU does
    (see :class:`AtomicCheckpointIO`)."""
    if isinstance(setting, bool):
        return "background" if setting else "in_line"
    if str(setting) != "auto":
        raise AistudioError(f"checkpoint_io.background={setting!r} is not a choice — use true, false or auto")
    return "commit_behind" if str(accelerator) == "cpu" else "background"


def _lowest_cpu_priority() -> None:
    """Run the writer thread at nice 19 (Linux schedules threads individually): training keeps the cores,
    the write fills idle moments (data waits, validation, epoch ends)."""
    import threading

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not permitted: plain priority is fine
        pass


def replace_with_link(source: str | Path, target: str | Path,
                      replace: Callable[[Path, Path], object] = os.replace) -> None:
    """Make ``target`` a hard link to ``source``, atomically (falls back to a copy across devices);
    ``replace`` renames the link over ``target``."""
    import shutil

    target = Path(target)
    if target.exists() and os.path.samefile(source, target):
        return  # already one file (a rename between two links to it would do nothing and leave tmp behind)
    tmp = target.with_name(f".{target.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a copy cut short by a full disk
        raise


class BestAndLastCheckpoint(ModelCheckpoint):
    """``best.ckpt`` by the monitored metric and a ``last.ckpt`` that really is the latest epoch.

    ``save_on_tie``: an epoch that equals the best value replaces it. Accuracy on a small validation
    set ties often, and the later epoch has trained longer at a lower learning rate.

    ``last_every_minutes``: ``last.ckpt`` is also written inside an epoch once this long has passed since its
    last write ended (training gets the whole interval however slow a write is), at a batch boundary, so a
    run killed without warning (kill -9, the OOM killer, a lost node) resumes from there rather than from
    the last epoch's end (the resume continues inside the epoch: :mod:`aistudio.training.resume_state`).
    Only ``last.ckpt``: mid-epoch there is no new validation score.
    On one device the clock is read every step; under DDP rank 0's clock decides every
    :data:`DDP_TIME_CHECK_STEPS` steps (one broadcast, not one per step). None: at epoch ends only.
    """

    DDP_TIME_CHECK_STEPS = 20

    def __init__(self, *args: Any, save_on_tie: bool = True, last_every_minutes: float | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.save_on_tie = save_on_tie
        self.last_every_minutes = _minutes(last_every_minutes)
        self._last_written = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_written = time.monotonic()

    def _last_due(self, trainer: pl.Trainer) -> bool:
        """Whether last.ckpt is due now (the same answer on every DDP rank)."""
        if self.last_every_minutes is None or not self.save_last or self._should_skip_saving_checkpoint(trainer):
            return False
        if trainer.world_size == 1:
            return time.monotonic() - self._last_written >= self.last_every_minutes * 60
        if trainer.global_step % self.DDP_TIME_CHECK_STEPS:
            return False
        due = time.monotonic() - self._last_written >= self.last_every_minutes * 60
        return bool(trainer.strategy.broadcast(due))

    def check_monitor_top_k(self, trainer: pl.Trainer, current: torch.Tensor | None = None) -> bool:
        if not self.save_on_tie or current is None or self.save_top_k == -1 \
                or len(self.best_k_models) < self.save_top_k:
            return super().check_monitor_top_k(trainer, current)
        op = {"min": torch.le, "max": torch.ge}[self.mode]
        decision = bool(op(current, self.best_k_models[self.kth_best_model_path]))
        return trainer.strategy.reduce_boolean_decision(decision)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        try:
            self._write_last_checkpoint(trainer, monitor_candidates)
        finally:
            self._last_written = time.monotonic()

    def _write_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
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

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run:  # Lightning 2.6 writes last.ckpt here even in fast_dev_run, which saves nothing else
            return
        super().on_train_end(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # the epoch's last batch is followed by the epoch end's own last.ckpt
        if batch_idx + 1 < trainer.num_training_batches and self._last_due(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            log.debug("last.ckpt written inside epoch %d after batch %d (step %d)", trainer.current_epoch, batch_idx,
                      trainer.global_step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """A background write that failed stops the run before the next training step."""
        checkpoint_io = trainer.strategy.checkpoint_io
        if isinstance(checkpoint_io, AtomicCheckpointIO) and checkpoint_io.failed:
            log.error("a checkpoint write failed: stopping before epoch %d batch %d (step %d)",
                      trainer.current_epoch, batch_idx, trainer.global_step)
            checkpoint_io.check()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        failed = any(isinstance(c, CheckpointWriteError) for c in exception_chain(exception))
        checkpoint_io = trainer.strategy.checkpoint_io
        if isinstance(checkpoint_io, AtomicCheckpointIO):
            checkpoint_io.wait()  # a write still pending when something else failed may fail too
            failed = failed or checkpoint_io.failed
        if not failed:
            super().on_exception(trainer, pl_module, exception)
            return
        # nothing more is written to a disk that just failed, and run.json must not name a best epoch
        # whose checkpoint never made it there
        if trainer.is_global_zero:
            self._record_best_on_disk(trainer)

    def _record_best_on_disk(self, trainer: pl.Trainer) -> None:
        from aistudio.training.callbacks import RunDirectoryCallback

        run = next((c for c in trainer.callbacks if isinstance(c, RunDirectoryCallback)), None)
        if run is None or run.monitor != self.monitor:
            return
        path = Path(self.best_model_path) if self.best_model_path else None
        epoch = checkpoint_epoch(path) if path is not None and path.is_file() else None
        try:
            run.record_best_on_disk(epoch)
        except Exception:  # noqa: BLE001 - the disk error is what the run must end with
            log.exception("could not correct run.json's best after the failed checkpoint write")


def _minutes(value: Any) -> float | None:
    """``last_every_minutes`` as a number of minutes >= 0, or None."""
    if value is None:
        return None
    try:
        minutes = float(value)
    except (TypeError, ValueError):
        minutes = -1.0
    if not minutes >= 0:  # also NaN
        raise AistudioError(f"callbacks.model_checkpoint.last_every_minutes={value} — use a number of minutes >= 0, "
                            "or null to write last.ckpt at epoch ends only")
    return minutes


def checkpoint_epoch(path: str | Path) -> int | None:
    """The epoch a checkpoint file holds, or None when it cannot be read (memory-mapped: tensors stay on disk)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        epoch = checkpoint.get("epoch")
        return int(epoch) if epoch is not None else None
    except Exception:  # noqa: BLE001 - an unreadable file holds no epoch we could name
        return None
