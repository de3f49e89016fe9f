"""The training-loop side of :mod:`aistudio.runs.stop`: stop at a batch boundary, save ``last.ckpt``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from aistudio.runs.stop import StopSignals, TrainingStopped
from aistudio.training.checkpoint import AtomicCheckpointIO

log = logging.getLogger("aistudio.train")


class GracefulStop(Callback):
    """Stops fit at a batch boundary on a signal and writes ``last.ckpt`` there (rank-synchronised by
    Lightning's own ``save_checkpoint``)."""

    def __init__(self, signals: StopSignals, last_checkpoint: str | Path):
        self.signals = signals
        self.last_checkpoint = Path(last_checkpoint)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.signals.install()  # Lightning's fit replaced SIGTERM's handler with its own: take it back
        self.signals.deferred = True

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.signals.deferred = False

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.signals.check(f" after epoch {trainer.current_epoch} batch {batch_idx}")

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self.signals.check(f" during validation of epoch {trainer.current_epoch}")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.signals.deferred = False
        if isinstance(exception, TrainingStopped) and trainer.state.fn == "fit" \
                and not trainer.sanity_checking:
            trainer.save_checkpoint(self.last_checkpoint)
            checkpoint_io = trainer.strategy.checkpoint_io
            if isinstance(checkpoint_io, AtomicCheckpointIO):  # the record says "saved" only once it is
                checkpoint_io.wait()
                if checkpoint_io.failed:
                    log.error("could not save %s at the stop (the write failed)", self.last_checkpoint)
                    return
            self.signals.saved_checkpoint = self.last_checkpoint
            log.info("saved %s at epoch %d, step %d", self.last_checkpoint, trainer.current_epoch,
                     trainer.global_step)
