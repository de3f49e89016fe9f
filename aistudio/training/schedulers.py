"""Learning-rate schedules that torch does not ship, and the injection of run-time lengths.

Scheduler configs are ``_partial_`` objects; values only known once the trainer exists
(``total_steps``, ``steps_per_epoch``, ``max_epochs``, ``max_lr``) are passed in when the factory
accepts them and the config left them out.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 1.0,
                  warmup_start_factor: float = 0.01, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up over ``warmup_epochs`` then cosine decay to ``min_lr_ratio`` x lr (per step)."""
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), max(0, total_steps - 1))
    decay = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return warmup_start_factor + (1.0 - warmup_start_factor) * step / max(1, warmup)
        progress = min(1.0, (step - warmup) / decay)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def build_scheduler(factory: Callable[..., Any], optimizer: Optimizer, runtime: dict[str, Any]) -> Any:
    """Call ``factory(optimizer, ...)`` adding the run-time values it accepts and was not given."""
    target = factory.func if hasattr(factory, "func") else factory
    given = getattr(factory, "keywords", {}) or {}
    try:
        accepted = inspect.signature(target).parameters
    except (TypeError, ValueError):
        accepted = {}
    extra = {k: v for k, v in runtime.items() if k in accepted and k not in given}
    return factory(optimizer, **extra)
