"""Training order and augmentation randomness as a pure function of (seed, epoch).

torch's default shuffling draws from the global RNG and albumentations' ``Compose`` seeds itself from
the OS unless told otherwise, so a resumed run (or a run with a different worker count) would see
other orders and other augmentations than the run it continues. :class:`EpochShuffleSampler` draws the
permutation and the augmentation seeds from ``(seed, epoch)``; it yields ``(index, seed)`` keys that the
task datasets understand (:func:`split_key`, :func:`seed_transform`). The pipeline is re-seeded at the
first sample of every batch (re-seeding an albumentations pipeline costs ~0.1 ms, per sample that
was 60% more data-loading work on small images): a DataLoader worker builds a whole batch in order,
so the result still does not depend on the number of workers or on which worker gets which batch.

It subclasses ``DistributedSampler`` so that under DDP Lightning keeps it (and calls ``set_epoch``):
each rank takes its own shard of the same permutation.

Evaluation under DDP shards with :class:`EvalShardSampler` instead of the ``DistributedSampler`` Lightning
would inject: that one pads the split so every rank gets as many images, which counts some images twice
in the validation and test scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DistributedSampler


def split_key(key: Any) -> tuple[int, int | None]:
    """A dataset key: a plain index (evaluation) or ``(index, augmentation seed or None)`` (training)."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), (int(key[1]) if key[1] is not None else None)
    return int(key), None


def seed_transform(transform: Any, seed: int | None) -> None:
    """Seed an albumentations pipeline for one sample (no-op for other callables or without a seed)."""
    if seed is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def distributed_world() -> tuple[int, int]:
    """(world size, rank) of the initialised process group; (1, 0) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class EpochShuffleSampler(DistributedSampler):
    """Shuffled ``(index, augmentation seed)`` keys determined by ``seed`` and the epoch alone."""

    def __init__(self, dataset: Any, seed: int = 0, drop_last: bool = False, batch_size: int = 1):
        replicas, rank = distributed_world()
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        self._skip = 0
        self.batch_size = max(1, int(batch_size))

    def skip_next(self, samples: int) -> None:
        """Leave out this rank's first ``samples`` keys in the next pass only (a resume inside an epoch)."""
        self._skip = int(samples)

    def __iter__(self) -> Iterator[tuple[int, int | None]]:  # type: ignore[override]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        size = len(self.dataset)  # type: ignore[arg-type]
        order = torch.randperm(size, generator=generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (size,), generator=generator).tolist()
        if not self.drop_last and self.total_size > size:  # pad so every rank gets as many samples
            order += (order * math.ceil(self.total_size / size))[: self.total_size - size]
        order = order[: self.total_size]
        skip, self._skip = self._skip, 0
        for count, position in enumerate(range(self.rank + skip * self.num_replicas, self.total_size,
                                               self.num_replicas), start=skip):
            index = order[position]
            yield index, (seeds[index] if count % self.batch_size == 0 else None)


class EvalShardSampler(DistributedSampler):
    """A validation/test split under DDP: rank r evaluates images r, r + W, r + 2W, ... (W processes), so
    every image is scored exactly once over all ranks and the ranks' counts differ by at most one.

    Lightning's default ``DistributedSampler`` repeats images to give every rank as many: with 7 images on
    2 ranks one is scored twice, and the reported accuracy, mAP or test loss are not the split's. Nothing in
    an evaluation step needs the ranks in lockstep (losses and metrics are reduced once, at epoch end, from
    sums and counts), except DDP's buffer sync on the first forward, so each rank needs at least one image:
    a split smaller than the world keeps the padding (then every rank scores one image, some twice).
    """

    def __init__(self, dataset: Any, num_replicas: int | None = None, rank: int | None = None):
        world, own_rank = distributed_world()
        replicas, rank = num_replicas or world, own_rank if rank is None else rank
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=False, drop_last=False)
        size = len(dataset)
        if size >= replicas:
            self.num_samples, self.total_size = len(range(rank, size, replicas)), size

    def __iter__(self) -> Iterator[int]:
        if self.total_size == len(self.dataset):  # type: ignore[arg-type]
            return iter(range(self.rank, self.total_size, self.num_replicas))
        return super().__iter__()
