"""Stacked batches collated into shared memory that each DataLoader worker reuses and the main process keeps mapped.

Why: a worker hands every batch to the main process through shared memory, and the default collate
allocates a fresh segment per tensor per batch, which the main process then receives as a file descriptor
(a round trip to the worker's resource-sharer thread) and maps again. On a small machine creating,
zero-filling and mapping those pages costs about as much per byte as decoding a JPEG (224 px uint8 images
on 2 cores: 0.1 ms of a 0.64 ms image), so two workers reached 1.43x one bare process instead of the 2x
the cores give (``scripts/bench/input_pipeline.py``). Here a worker stacks a batch's tensors (images,
labels, masks) into one segment from a small ring of its own; the main process maps each segment once,
the first time it arrives, and afterwards a batch crosses as a few integers (which segment, and where
each tensor lies in it).

Safety: the main process gives each batch tensors of their own over the segment's mapping, and hands a
segment back to its worker only once every tensor of that batch has been dropped (weak references to
them have expired), so a batch that user code keeps (a view, a slice) is never overwritten: its segment
simply stays out of the ring. With ``pin_memory`` the pinning thread copies a batch and drops it, so its
segment goes back when the next batch arrives. Releases travel through one non-blocking pipe per worker, tagged with the
worker process's random incarnation so a later generation of workers (``persistent_workers=false``)
ignores its predecessors'. When a worker has no free segment it falls back to a fresh one, as the
default collate does.

Shared memory (/dev/shm) can be small: Docker gives a container 64 MB unless told otherwise. A ring
keeps its segments while idle, so a worker adds one only when /dev/shm would still have room afterwards
for every batch that can be on its way at once in fresh segments (each worker's prefetched ones and the
few the Trainer holds, see :func:`ring_for_loader`): the ring only uses memory the default collate would
not need, and on a small /dev/shm the loader falls back to the default collate's fresh segments (one
warning) instead of failing where the default collate would have run.

Batches are what ``default_collate`` returns for the same samples, plus a
:class:`RingToken` as the last element, which the datamodule removes before the batch reaches the model.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import default_collate, get_worker_info

from aistudio.runs.failures import SHARED_MEMORY_DIR

log = logging.getLogger(__name__)

_RELEASE = struct.Struct("<QQ")  # (incarnation, slot): 16 bytes, written whole (< PIPE_BUF)
_ALIGN = 64
_ring_ids = itertools.count(1)

Layout = list[tuple[torch.dtype, tuple[int, ...], int, int]]  # (dtype, shape, byte offset, bytes) per tensor


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


def shared_memory_free() -> int | None:
    """Bytes free in /dev/shm (None where there is none: not Linux)."""
    try:
        stats = os.statvfs(SHARED_MEMORY_DIR)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def _out_of_shared_memory(error: RuntimeError) -> bool:
    """torch's "unable to allocate shared memory(shm) for file ...: No space left on device (28)"."""
    text = str(error)
    return "shared memory" in text and "No space left" in text


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


def _layout(samples: Sequence[Any]) -> Layout | None:
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


def _views(flat: torch.Tensor, layout: Layout) -> list[torch.Tensor]:
    return [flat[offset:offset + size].view(dtype).view(shape) for dtype, shape, offset, size in layout]


class _SlotBatch:
    """What a worker sends for a batch in a ring segment: the segment's number, and the segment itself only
    the first time (the main process maps it then and keeps the mapping)."""

    def __init__(self, token: RingToken, layout: Layout, storage: torch.UntypedStorage | None):
        self.token, self.layout, self.storage = token, layout, storage

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _receive_slot_batch, (self.token, self.layout, self.storage)


def _receive_slot_batch(token: RingToken, layout: Layout, storage: torch.UntypedStorage | None) -> list[Any]:
    """Unpickled in the main process: the batch's tensors over the mapped segment, then its token."""
    ring = _live_rings.get(token.ring)
    if ring is None:
        raise RuntimeError(f"a DataLoader worker sent a batch for batch ring {token.ring}, which is gone "
                           "(data.reuse_batch_memory=false avoids reused batch memory)")
    return ring.receive(token, layout, storage)


class BatchRing:
    """A DataLoader ``collate_fn`` for stacked batches (run in the workers) and its receiving side (main process)."""

    def __init__(self, workers: int, slots: int, in_flight: int | None = None):
        self.id = next(_ring_ids)
        self.slots = max(1, int(slots))
        # batches that can be on their way at once (default: 2 prefetched per worker, 3 held by the Trainer);
        # a new segment must leave /dev/shm room for that many fresh ones
        self.in_flight = int(in_flight) if in_flight is not None else 2 * workers + 3
        self._pipes = [os.pipe() for _ in range(workers)]  # (read, write) per worker id
        for read, write in self._pipes:
            os.set_blocking(read, False)
            os.set_blocking(write, False)  # a full pipe drops the release (the segment leaks): never blocks
        # main process side
        self._lock = threading.Lock()
        self._mapped: dict[int, tuple[int, dict[int, np.ndarray]]] = {}  # worker -> (incarnation, slot -> mapping)
        self._pending: list[tuple[RingToken, StorageWeakRef]] = []
        # worker side, reset in each new worker process
        self._owner = os.getpid()
        self._incarnation = 0
        self._segments: list[torch.Tensor] = []  # flat uint8 shared tensors
        self._free: list[bool] = []
        self._announced: list[bool] = []  # the main process has this segment mapped
        self._warned = False  # this worker said once that /dev/shm is short

    # -- worker side ------------------------------------------------------------------------------------

    def __call__(self, samples: Sequence[Any]) -> Any:
        info = get_worker_info()
        layout = _layout(samples) if info is not None and info.id < len(self._pipes) else None
        if layout is None:
            return [*self._default(samples), RingToken(self.id, -1, 0, None)]
        self._enter_worker()
        self._collect_releases(info.id)
        nbytes = layout[-1][2] + layout[-1][3]
        slot = self._segment_for(nbytes, info.id)
        segment = self._segments[slot] if slot is not None else _shared_bytes(nbytes)
        batch = _views(segment, layout)
        for view, column in zip(batch, zip(*samples)):
            if isinstance(column[0], torch.Tensor):
                torch.stack(column, out=view)
            else:
                view.copy_(torch.tensor(column, dtype=view.dtype))
        token = RingToken(self.id, info.id, self._incarnation, slot)
        if slot is None:
            return [*batch, token]
        self._free[slot] = False
        storage = None if self._announced[slot] else segment.untyped_storage()
        self._announced[slot] = True
        return _SlotBatch(token, layout, storage)

    @staticmethod
    def _default(samples: Sequence[Any]) -> list[Any]:
        batch = default_collate(samples)
        return list(batch) if isinstance(batch, (tuple, list)) else [batch]

    def _enter_worker(self) -> None:
        """A new worker process (forked with the main process's empty state) starts its own ring."""
        if os.getpid() != self._owner or not self._incarnation:
            self._owner = os.getpid()
            self._incarnation = int.from_bytes(os.urandom(8), "little") or 1
            self._segments, self._free, self._announced, self._warned = [], [], [], False
            self._mapped, self._pending = {}, []  # the main process's, copied by fork: not this worker's

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

    def _segment_for(self, nbytes: int, worker: int = 0) -> int | None:
        """A free segment that holds ``nbytes`` (a new one while the ring is not full; a free one that is
        too small is replaced); None: every segment is out, or /dev/shm has no room to spare for another:
        collate into a fresh one."""
        free = [k for k, is_free in enumerate(self._free) if is_free]
        for slot in free:
            if self._segments[slot].numel() >= nbytes:
                return slot
        if len(self._segments) >= self.slots and not free:
            return None
        segment = self._new_segment(nbytes, worker)
        if segment is None:
            return None
        if len(self._segments) < self.slots:
            self._segments.append(segment)
            self._free.append(True)
            self._announced.append(False)
            return len(self._segments) - 1
        self._segments[free[0]] = segment
        self._announced[free[0]] = False
        return free[0]

    def _new_segment(self, nbytes: int, worker: int) -> torch.Tensor | None:
        """A new segment for the ring, unless /dev/shm would then lack room for the batches in flight
        (``in_flight`` fresh segments of ``nbytes``): None."""
        available = shared_memory_free()
        if available is None or available - nbytes >= self.in_flight * nbytes:
            try:
                return _shared_bytes(nbytes)
            except RuntimeError as err:  # another process took the room meanwhile
                if not _out_of_shared_memory(err):
                    raise
        if not self._warned:
            self._warned = True
            # one line for the loader (every worker sees the same /dev/shm); the other workers at debug level
            (log.warning if worker == 0 else log.debug)(
                "shared memory is short (%.1f MB free in %s, %.1f MB a batch): batches beyond the %d buffer(s) "
                "kept for reuse go into fresh shared memory (slower); a larger %s (docker run --shm-size=8g) "
                "avoids it", (available or 0) / 1e6, SHARED_MEMORY_DIR, nbytes / 1e6, len(self._segments),
                SHARED_MEMORY_DIR)
        return None

    # -- main process side -----------------------------------------------------------------------------

    def receive(self, token: RingToken, layout: Layout, storage: torch.UntypedStorage | None) -> list[Any]:
        """The batch a worker collated into segment ``token.slot``, as tensors of its own over the main process's
        mapping of that segment (mapped now when ``storage`` comes with it), then its token. Earlier batches
        whose tensors are all gone go back to their workers now."""
        with self._lock:
            incarnation, mappings = self._mapped.get(token.worker, (None, {}))
            if incarnation != token.incarnation:  # a new worker process: its predecessor's segments are unmapped
                mappings = {}
                self._mapped[token.worker] = (token.incarnation, mappings)
            if storage is not None:
                mappings[token.slot] = torch.empty(0, dtype=torch.uint8).set_(storage).numpy()
            mapping = mappings.get(token.slot)
            if mapping is None:
                raise RuntimeError(f"DataLoader worker {token.worker} sent a batch in shared memory segment "
                                   f"{token.slot}, which this process never received "
                                   "(data.reuse_batch_memory=false avoids reused batch memory)")
            # a storage of this batch's own over the mapping: it expires when the batch's last tensor is dropped
            flat = torch.frombuffer(mapping, dtype=torch.uint8, count=layout[-1][2] + layout[-1][3])
            self._track(token, flat)
            self._release_dropped()
        return [*_views(flat, layout), token]

    def _track(self, token: RingToken, flat: torch.Tensor) -> None:
        """Hand ``token``'s segment back once ``flat`` and every view of it are gone."""
        self._pending.append((token, StorageWeakRef(flat.untyped_storage())))

    def _release_dropped(self) -> None:
        waiting = []
        for token, storage in self._pending:
            if storage.expired():
                self._release(token)
            else:
                waiting.append((token, storage))
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


def ring_for_loader(workers: int, prefetch_factor: int, processes: int = 1) -> BatchRing:
    """A ring for one loader: room for the batches a worker has in flight, the one the Trainer's fetcher holds
    ahead, the step's and the one still waiting to be released.

    The shared memory it leaves for fresh segments: the batches in flight of two such loaders (a fit's train
    and validation loaders, whose persistent workers live side by side, and a loader stopped early by
    ``limit_train_batches`` keeps its prefetched batches until its next epoch) in each of this machine's
    ``processes`` training processes (DDP)."""
    in_flight = processes * 2 * (workers * prefetch_factor + 3)
    ring = BatchRing(workers, slots=prefetch_factor + 4, in_flight=in_flight)
    _live_rings[ring.id] = ring
    return ring


def take_token(batch: Any) -> Any:
    """``batch`` without its :class:`RingToken`; any other batch unchanged."""
    if isinstance(batch, list) and batch and isinstance(batch[-1], RingToken):
        return batch[:-1]
    return batch
