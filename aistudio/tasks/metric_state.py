"""The train metrics' accumulated state in a checkpoint written within an epoch (a stop), so the resumed
epoch's ``train_acc``, ``train_f1``... count the batches before the stop too, as its loss mean does
(:class:`aistudio.tasks.epoch_losses.EpochLosses`). At an epoch's end the metrics were just reset: the
saved state is empty and restoring it changes nothing.

torchmetrics keeps metric states out of ``state_dict`` unless they are marked persistent; they are
marked for the moment of saving or loading only, so the checkpoint's weights keep their keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchmetrics import Metric, MetricCollection


def _members(metrics: Metric | MetricCollection) -> list[Metric]:
    return list(metrics.values()) if isinstance(metrics, MetricCollection) else [metrics]


def _while_persistent(metrics: Metric | MetricCollection, action: Callable[[], Any]) -> Any:
    flags = [dict(member._persistent) for member in _members(metrics)]
    metrics.persistent(True)
    try:
        return action()
    finally:
        for member, saved in zip(_members(metrics), flags):
            member._persistent.update(saved)


def metric_state(metrics: Metric | MetricCollection) -> dict[str, Any]:
    """The accumulated states (on their device; the checkpoint writer copies them) and update counts."""
    states = _while_persistent(metrics, metrics.state_dict)
    return {"states": dict(states), "updates": [member._update_count for member in _members(metrics)]}


def restore_metric_state(metrics: Metric | MetricCollection, saved: dict[str, Any] | None,
                         device: torch.device) -> None:
    """Put back what :func:`metric_state` saved (nothing for a checkpoint without it)."""
    if not saved or not saved.get("states"):
        return
    _while_persistent(metrics, lambda: metrics.load_state_dict(saved["states"], strict=False))
    metrics.to(device)
    for member, updates in zip(_members(metrics), saved.get("updates") or []):
        member._update_count = int(updates)
        member._computed = None
