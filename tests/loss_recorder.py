"""Test-only helpers: :class:`LossRecorder` records every step's loss and batch size on each process;
:class:`SignalAt` stops a run with a signal at a chosen batch.

Added to a real ``train.py`` run by Hydra overrides (the subprocess runs from the repository root, where
``tests`` is an importable package)::

    +callbacks.loss_recorder._target_=tests.loss_recorder.LossRecorder
    +callbacks.loss_recorder.directory=/some/folder

Each process writes ``<directory>/rank<global rank>.json``: ``{"train": [[epoch, batch_size, loss], ...],
"val": [...], "test": [...]}``, rewritten at the end of every epoch of every stage. The train loss is the
one the module returned (``outputs["loss"]``); validation and test steps return nothing, so their loss is
computed again from the same batch with the same (eval-mode) weights. Sanity-check batches are not recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


def batch_size_of(batch: Any) -> int:
    return len(batch[1])


class LossRecorder(Callback):
    def __init__(self, directory: str):
        self.directory = Path(directory)
        self.steps: dict[str, list[list[float]]] = {"train": [], "val": [], "test": []}

    def _dump(self, trainer: Any) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"rank{trainer.global_rank}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.steps))
        os.replace(tmp, path)

    def _eval_loss(self, trainer: Any, pl_module: Any, stage: str, batch: Any) -> None:
        if trainer.sanity_checking:
            return
        with torch.no_grad():
            loss = pl_module.step_outputs(batch)[0]
        self.steps[stage].append([trainer.current_epoch, batch_size_of(batch), float(loss)])

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.steps["train"].append([trainer.current_epoch, batch_size_of(batch), float(loss)])

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._eval_loss(trainer, pl_module, "val", batch)

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._eval_loss(trainer, pl_module, "test", batch)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._dump(trainer)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._dump(trainer)

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._dump(trainer)


class SignalAt(Callback):
    """Sends ``signum`` (SIGINT by default) to this process once, after training batch ``batch`` of epoch
    ``epoch`` — what ``kill -INT <pid>`` does, at a known point: the run's signal handler defers the stop to
    the next batch boundary, where it writes ``last.ckpt``. ``marker``: a file written when the signal is
    sent; while it exists nothing is sent again (the resumed run re-reads the run's own overrides).
    Rank 0 only."""

    def __init__(self, epoch: int, batch: int, marker: str, signum: int = 2):
        self.epoch, self.batch, self.marker, self.signum = int(epoch), int(batch), Path(marker), int(signum)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (trainer.global_rank == 0 and trainer.current_epoch == self.epoch and batch_idx == self.batch
                and not self.marker.exists()):
            self.marker.write_text(f"epoch {self.epoch} batch {self.batch}\n")
            os.kill(os.getpid(), self.signum)
