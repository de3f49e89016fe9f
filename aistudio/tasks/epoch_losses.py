"""Epoch means of the losses, summed on the device and logged once per epoch.

An ``on_epoch`` ``self.log`` costs Lightning 0.3-0.7 ms of host time on every step (its result
collection moves and checks each value), which on a GPU-fed small network was a tenth of the step. The
sums here cost one small device op a step, and the mean is the same batch-size-weighted one Lightning
computes, taken over every process under DDP (sums and counts added up, not means averaged).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch


class EpochLosses:
    """Per stage (train/val/test): the batch-size-weighted sum of each named loss and the images counted."""

    def __init__(self) -> None:
        self._sums: dict[str, dict[str, torch.Tensor]] = {}
        self._counts: dict[str, int] = {}

    def reset(self, stage: str) -> None:
        self._sums.pop(stage, None)
        self._counts.pop(stage, None)

    def add(self, stage: str, losses: Mapping[str, torch.Tensor], batch_size: int) -> None:
        """Add one batch's losses (detached; no host sync) weighted by its ``batch_size``."""
        sums = self._sums.setdefault(stage, {})
        for name, value in losses.items():
            weighted = value.detach().float() * batch_size
            if name in sums and sums[name].device == weighted.device:
                sums[name].add_(weighted)
            else:  # the first batch, or the first after a resume restored the sums on another device
                sums[name] = weighted + sums[name].to(weighted.device) if name in sums else weighted
        self._counts[stage] = self._counts.get(stage, 0) + int(batch_size)

    def pending(self, stage: str) -> bool:
        return bool(self._sums.get(stage))

    def pop(self, stage: str, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The stage's means, then forgotten. ``reduce_sum`` adds a tensor up over processes (DDP's
        ``strategy.reduce(x, reduce_op="sum")``): the sums and the count travel together in one call."""
        sums, count = self._sums.pop(stage, {}), self._counts.pop(stage, 0)
        if not sums:
            return {}
        names = list(sums)
        totals = torch.stack([sums[name] for name in names] + [sums[names[0]].new_tensor(float(count))])
        if reduce_sum is not None:
            totals = reduce_sum(totals)
        means = totals[:-1] / totals[-1].clamp_min(1.0)
        return dict(zip(names, means.unbind()))

    def state_dict(self, stage: str) -> dict[str, Any]:
        """What a checkpoint written within an epoch keeps, so a resumed epoch's mean covers all its steps."""
        return {"sums": {name: value.detach().cpu() for name, value in self._sums.get(stage, {}).items()},
                "count": self._counts.get(stage, 0)}

    def load_state_dict(self, stage: str, state: Mapping[str, Any], device: torch.device) -> None:
        self.reset(stage)
        if state.get("sums"):
            self._sums[stage] = {name: value.to(device) for name, value in state["sums"].items()}
            self._counts[stage] = int(state.get("count", 0))
