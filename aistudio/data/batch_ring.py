"""Stacked batches collated into shared memory that each DataLoader worker reuses, released by the main process.

Why: a worker hands every batch to the main process through shared memory, and the default collate
allocates a fresh segment per tensor per batch. On a small machine the kernel's work to create, zero-fill
and map those pages costs about as much per byte as decoding a JPEG (224 px uint8 images on 2 cores:
0.1 ms of a 0.64 ms image), so two workers reached 1.43x one bare process instead of the 2x the cores
give (``scripts/bench/input_pipeline.py``). Here a worker stacks a batch's tensors (images, labels,
masks) into one segment from a small ring of its own and reuses a segment once the main process is done
with it.

Safety: a segment is written again only after the main process has both received its batch
(:meth:`BatchRing.received`, from the datamodule's ``on_before_batch_transfer``) and dropped every
tensor of it (weak references to the tensors' storages have all expired), so a batch that user code
keeps (a view, a slice) is never overwritten: its segment simply stays out of the ring. With
``pin_memory`` the main process sees the pinned copies, so a segment waits for those to be dropped (later
than needed, never earlier). Releases travel
through one non-blocking pipe per worker, tagged with the worker process's random incarnation so a
later generation of workers (``persistent_workers=false``) ignores its predecessors'. A batch the
main process never receives (an epoch cut short) leaves its segment unreleased; when a worker has no
free segment it falls back to a fresh one, as the default collate does. Batches are what
``default_collate`` returns for the same samples, plus a :class:`RingToken` as the last element, which
the datamodule removes before the batch reaches the model.
"""

from __future__ import annotations

import itertools
import os
import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import default_collate, get_worker_info

_RELEASE = struct.Struct("<QQ")  # (incarnation, slot): 16 bytes, written whole (< PIPE_BUF)
_ALIGN = 64
_ring_ids = itertools.count(1)


@dataclass(frozen=True)
class RingToken:
    """Which ring, worker (incarnation) and segment a batch was collated into; ``slot`` None: a fresh one."""

    ring: int
    worker: int
    incarnation: int
    slot: int | None


def _shared_bytes(nbytes: int) -> torch.Tensor:
    """A flat uint8 tensor over a new shared-memory segment (allocated there, not copied into it)."""
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))


def _column_spec(column: Sequence[Any]) -> tuple[torch.dtype, tuple[int, ...]] | None:
    """dtype and stacked shape of one sample position, as default_collate builds it; None: not stackable here."""
    first = column[0]
    if isinstance(first, torch.Tensor):
        if all(isinstance(v, torch.Tensor) and v.shape == first.shape and v.dtype == first.dtype
               and v.device.type == "cpu" for v in column):
            return first.dtype, (len(column), *first.shape)
        return None
    if all(type(v) is int for v in column):
        return torch.int64, (len(column),)
    if all(type(v) is float for v in column):
        return torch.float64, (len(column),)
    return None


def _layout(samples: Sequence[Any]) -> list[tuple[torch.dtype, tuple[int, ...], int, int]] | None:
    """(dtype, shape, byte offset, bytes) per sample position; None when default_collate should batch these."""
    if not samples or not all(isinstance(s, (tuple, list)) and len(s) == len(samples[0]) for s in samples):
        return None
    layout, offset = [], 0
    for column in zip(*samples):
        spec = _column_spec(column)
        if spec is None:
            return None
        dtype, shape = spec
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        layout.append((dtype, shape, offset, nbytes))
        offset += -(-nbytes // _ALIGN) * _ALIGN
    return layout


class BatchRing:
    """A DataLoader ``collate_fn`` for stacked batches (run in the workers) and its release side (main process)."""

    def __init__(self, workers: int, slots: int):
        self.id = next(_ring_ids)
        self.slots = max(1, int(slots))
        self._pipes = [os.pipe() for _ in range(workers)]  # (read, write) per worker id
        for read, write in self._pipes:
            os.set_blocking(read, False)
            os.set_blocking(write, False)  # a full pipe drops the release (the segment leaks): never blocks
        self._pending: list[tuple[RingToken, list[StorageWeakRef]]] = []
        # worker side, reset in each new worker process
        self._owner = os.getpid()
        self._incarnation = 0
        self._segments: list[torch.Tensor] = []  # flat uint8 shared tensors
        self._free: list[bool] = []

    # -- worker side ------------------------------------------------------------------------------------

    def __call__(self, samples: Sequence[Any]) -> list[Any]:
        info = get_worker_info()
        layout = _layout(samples) if info is not None and info.id < len(self._pipes) else None
        if layout is None:
            return [*self._default(samples), RingToken(self.id, -1, 0, None)]
        self._enter_worker()
        self._collect_releases(info.id)
        nbytes = layout[-1][2] + layout[-1][3]
        slot = self._segment_for(nbytes)
        segment = self._segments[slot] if slot is not None else _shared_bytes(nbytes)
        batch = []
        for (dtype, shape, offset, size), column in zip(layout, zip(*samples)):
            view = segment[offset:offset + size].view(dtype).view(shape)
            if isinstance(column[0], torch.Tensor):
                torch.stack(column, out=view)
            else:
                view.copy_(torch.tensor(column, dtype=dtype))
            batch.append(view)
        if slot is not None:
            self._free[slot] = False
        return [*batch, RingToken(self.id, info.id, self._incarnation, slot)]

    @staticmethod
    def _default(samples: Sequence[Any]) -> list[Any]:
        batch = default_collate(samples)
        return list(batch) if isinstance(batch, (tuple, list)) else [batch]

    def _enter_worker(self) -> None:
        """A new worker process (forked with the main process's empty state) starts its own ring."""
        if os.getpid() != self._owner or not self._incarnation:
            self._owner = os.getpid()
            self._incarnation = int.from_bytes(os.urandom(8), "little") or 1
            self._segments, self._free = [], []

    def _collect_releases(self, worker: int) -> None:
        read = self._pipes[worker][0]
        while True:
            try:
                data = os.read(read, 4096)
            except BlockingIOError:
                return
            if not data:
                return
            for incarnation, slot in _RELEASE.iter_unpack(data):
                if incarnation == self._incarnation and slot < len(self._free):
                    self._free[slot] = True

    def _segment_for(self, nbytes: int) -> int | None:
        """A free segment that holds ``nbytes`` (a new one while the ring is not full; a free one that is
        too small is replaced); None: every segment is out, collate into a fresh one."""
        free = [k for k, is_free in enumerate(self._free) if is_free]
        for slot in free:
            if self._segments[slot].numel() >= nbytes:
                return slot
        if len(self._segments) < self.slots:
            self._segments.append(_shared_bytes(nbytes))
            self._free.append(True)
            return len(self._segments) - 1
        if free:
            self._segments[free[0]] = _shared_bytes(nbytes)
            return free[0]
        return None

    # -- main process side -----------------------------------------------------------------------------

    def received(self, token: RingToken, batch: Sequence[Any]) -> None:
        """The main process has ``batch`` (without its token): its segment goes back to its worker once every
        tensor in it has been dropped. Earlier batches whose tensors are all gone are released now."""
        if token.slot is not None and 0 <= token.worker < len(self._pipes):
            storages = [StorageWeakRef(t.untyped_storage()) for t in batch if isinstance(t, torch.Tensor)]
            self._pending.append((token, storages))
        waiting = []
        for pending, storages in self._pending:
            if all(storage.expired() for storage in storages):
                self._release(pending)
            else:
                waiting.append((pending, storages))
        self._pending = waiting

    def _release(self, token: RingToken) -> None:
        try:
            os.write(self._pipes[token.worker][1], _RELEASE.pack(token.incarnation, token.slot))
        except (BlockingIOError, BrokenPipeError, OSError):
            pass  # the worker is gone or not reading: the segment stays out of its ring

    def close(self) -> None:
        """Close the pipes (the main process's ends; workers' copies close with them)."""
        for read, write in self._pipes:
            for fd in (read, write):
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._pipes = []

    def __del__(self) -> None:
        if os.getpid() == self._owner and self._pipes and not self._incarnation:
            self.close()


_live_rings: weakref.WeakValueDictionary[int, BatchRing] = weakref.WeakValueDictionary()


def ring_for_loader(workers: int, prefetch_factor: int) -> BatchRing:
    """A ring for one loader: room for the batches a worker has in flight, the one the Trainer's fetcher holds
    ahead, the step's and the one still waiting to be released."""
    ring = BatchRing(workers, slots=prefetch_factor + 4)
    _live_rings[ring.id] = ring
    return ring


def take_token(batch: Any) -> Any:
    """``batch`` without its :class:`RingToken` (the main process has received it: see :meth:`BatchRing.received`);
    any other batch unchanged."""
    if not (isinstance(batch, list) and batch and isinstance(batch[-1], RingToken)):
        return batch
    token, batch = batch[-1], batch[:-1]
    ring = _live_rings.get(token.ring)
    if ring is not None:
        ring.received(token, batch)
    return batch
