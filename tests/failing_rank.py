"""A test-only callback (added by Hydra, ``+callbacks.fail._target_=tests.failing_rank.DecodeOnRank``): one
DDP rank reads a corrupt image at a known batch, as a rank whose shard holds a truncated file does."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback

from aistudio.data.images import read_image


class DecodeOnRank(Callback):
    """Rank ``rank`` decodes ``path`` (a corrupt file: the real ImageReadError) before training batch
    ``batch`` of epoch ``epoch``; the other ranks go on into the next collective."""

    def __init__(self, rank: int, path: str, epoch: int = 0, batch: int = 1):
        self.rank, self.path, self.epoch, self.batch = int(rank), path, int(epoch), int(batch)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            read_image(self.path)
