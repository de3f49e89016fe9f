"""What a checkpoint needs beyond Lightning's own state for a resume to continue *exactly*.

Lightning restores weights, optimizer, scheduler and loop counters, but not the random number
generators, and it restarts an interrupted epoch's data loader from the beginning. This callback
stores the RNG states and how many batches of the current epoch were done; on resume it restores the
RNGs once the sanity check is over and tells :class:`EpochShuffleSampler` to skip the batches
already trained on, so the resumed epoch sees exactly the samples it had left.
"""

from __future__ import annotations

import logging
import random
import warnings
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from aistudio.data.sampling import EpochShuffleSampler

log = logging.getLogger("aistudio.train")
KEY = "aistudio_resume"

# handled here: the sampler skips the batches already done
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


def rng_states() -> dict[str, Any]:
    """Every generator's state as tensors and plain numbers (checkpoints are loaded with weights_only)."""
    version, python_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = states["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["position"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeState(Callback):
    def __init__(self) -> None:
        self.batches_done = 0
        self._restored: dict[str, Any] | None = None
        self._inside_epoch = False  # the first epoch after a resume continues, it does not start at 0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._inside_epoch:
            self.batches_done = 0
        self._inside_epoch = False

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches_done = batch_idx + 1

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint[KEY] = {"rng": rng_states(), "epoch": trainer.current_epoch, "batches_done": self.batches_done}

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self._restored = checkpoint.get(KEY)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        state, self._restored = self._restored, None
        if not state:
            return
        done = int(state.get("batches_done") or 0)
        inside = 0 < done < trainer.num_training_batches
        if inside:  # the uninterrupted run drew this epoch's loader seed before the checkpoint's RNG state
            self._restart_data(trainer, done)
            set_rng_states(state["rng"])
            self.batches_done, self._inside_epoch = done, True
            log.info("resuming inside epoch %d: %d batches were done, continuing with the rest",
                     trainer.current_epoch, done)
        else:  # ...and the next epoch's after it
            set_rng_states(state["rng"])
            self._restart_data(trainer, 0)

    @staticmethod
    def _restart_data(trainer: Any, batches_done: int) -> None:
        """Point the training order at the epoch being resumed, past the batches already done, and start
        the loader's iterator again.

        Lightning creates the first epoch's iterator in ``setup_data``, before this hook and before it sets
        the sampler's epoch; with DataLoader workers that iterator has already drawn its first indices (from
        epoch 0's order, without the skip). Restarting it here is what Lightning itself does at the start of
        every later epoch (``iter(data_fetcher)``), so the loop's own batch count stays right.
        """
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        if not isinstance(sampler, EpochShuffleSampler):
            return
        sampler.set_epoch(trainer.current_epoch)
        if batches_done:
            sampler.skip_next(batches_done * loader.batch_size)
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if fetcher is not None:
            iter(fetcher)
