"""``callbacks.ema``: an exponential moving average of the weights (Lightning's EMAWeightAveraging).

The average is what validation and test measure and what checkpoints hold as ``state_dict`` (the live
weights are kept beside it for resuming), so best.ckpt, eval.py, predict.py and export.py all use the
averaged model without knowing about it.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from aistudio import AistudioError


class WeightEMA(EMAWeightAveraging):
    """EMAWeightAveraging whose checkpoints test as they validated: loading one to test (after fit, on
    the same Trainer) keeps its ``state_dict`` — the average — where Lightning's callback would put the
    live weights back (``current_model_state`` is for resuming a fit only)."""

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def weight_ema(decay: float | None = None, update_every_n_steps: int = 1,
               update_starting_at_step: int | None = None) -> Any:
    """The EMA callback, or None (off) when ``decay`` is null."""
    if decay is None:
        return None
    if not 0.0 < float(decay) < 1.0:
        raise AistudioError(f"callbacks.ema.decay={decay}: takes a number between 0 and 1 (e.g. 0.999), or null (off)")
    return WeightEMA(decay=float(decay), update_every_n_steps=int(update_every_n_steps),
                              update_starting_at_step=update_starting_at_step)
