"""Mean average precision that DDP processes can sync when they scored different numbers of images.

torchmetrics' ``MeanAveragePrecision`` keeps one tensor per image in each state and gathers the states
element by element: a process that scored 4 images makes 4 collective calls per state, one that scored 3
makes 3, and gloo aborts on the mismatch ("Received data size doesn't match expected size"; NCCL hangs).
Evaluation under DDP shards a split without padding (:class:`aistudio.data.sampling.EvalShardSampler`), so
the counts differ by one whenever the split is not a multiple of the world size. Here every process sends
its per-image lists whole, in one ``all_gather_object``, and the metric is computed on all of them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torchmetrics.detection import MeanAveragePrecision


class ShardedMeanAveragePrecision(MeanAveragePrecision):
    """``MeanAveragePrecision`` (every argument as there) whose DDP sync allows uneven image counts.

    Every per-image state travels in the same gather, in rank order, so image i's detections, ground truth
    and masks stay aligned (torchmetrics interleaves its mask lists by position, which also assumes equal
    counts)."""

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any = None) -> None:
        group = process_group or self.process_group
        names = [name for name, default in self._defaults.items() if isinstance(default, list)]
        local = {name: [_to_cpu(value) for value in getattr(self, name)] for name in names}
        gathered: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, local, group=group)
        for name in names:
            setattr(self, name, [_to_device(value, self.device) for part in gathered for value in part[name]])


def _to_cpu(value: Any) -> Any:
    """A tensor state on the host for pickling; a mask state (run-length encodings in a tuple) as it is."""
    return value.cpu() if isinstance(value, torch.Tensor) else value


def _to_device(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value
