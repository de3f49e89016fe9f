"""Host buffers that a background checkpoint write snapshots the training state into, reused epoch after epoch.

Why: a background write must copy every tensor first (training goes on changing them in place). A copy
on the device (``clone()``) holds a second copy of the weights and optimizer state in GPU memory until the
write is done, which can run a large model out of memory at an epoch's end, and the writer thread's own
device-to-host copies then queue between the training kernels. Here the snapshot goes straight to host
memory: pinned buffers filled by asynchronous copies (an event says when they are done; the writer waits on
it), allocated once and reused, so an epoch end also skips allocating and page-faulting a fresh copy of the
state (on CPU: about 90 MB of first-touch pages for a resnet18 and its momentum).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from aistudio.training.tensor_tree import map_tensors, tensors_of

MAX_BUFFER_SETS = 2  # one being written while the next epoch's snapshot fills the other


class Snapshot:
    """A checkpoint whose tensors are host copies; :meth:`ready` blocks until they hold their values,
    :meth:`release` hands the buffers back for the next snapshot."""

    def __init__(self, checkpoint: dict[str, Any], size: int, event: Any, release: Callable[[], None]):
        self.checkpoint, self.size = checkpoint, size
        self._event, self._release = event, release

    def ready(self) -> dict[str, Any]:
        if self._event is not None:
            self._event.synchronize()
        return self.checkpoint

    def release(self) -> None:
        self._release()


class HostStaging:
    """Reusable host buffer sets, one per checkpoint layout (each tensor's shape, strides, dtype, in order)."""

    def __init__(self) -> None:
        self._free: list[tuple[tuple[Any, ...], list[torch.Tensor]]] = []
        self._count = 0
        self._lock = threading.Lock()

    def snapshot(self, checkpoint: dict[str, Any], wait: Callable[[], None]) -> Snapshot:
        """Copy ``checkpoint``'s tensors into host buffers (asynchronously from a GPU); ``wait`` blocks until
        the writes in flight are done, for when every buffer set is still in use."""
        tensors = tensors_of(checkpoint)
        layout = tuple(_layout(t) for t in tensors)
        buffers = self._take(layout, tensors, wait)
        on_gpu = any(t.is_cuda for t in tensors)
        position = iter(range(len(tensors)))

        def copy(tensor: torch.Tensor) -> torch.Tensor:
            buffer = buffers[next(position)]
            if buffer is None:  # not a plain strided tensor (sparse, ...): a one-off copy
                return tensor.detach().to("cpu", copy=True)
            return buffer.copy_(tensor.detach(), non_blocking=tensor.is_cuda)

        staged = map_tensors(checkpoint, copy)
        event = None
        if on_gpu:
            event = torch.cuda.Event()
            event.record()
        size = sum(t.nelement() * t.element_size() for t in tensors)
        return Snapshot(staged, size, event, lambda: self._give_back(layout, buffers))

    def clear(self) -> None:
        """Drop the buffers (end of a stage): the memory goes back to the system."""
        with self._lock:
            self._free.clear()
            self._count = 0

    def _take(self, layout: tuple[Any, ...], tensors: list[torch.Tensor],
              wait: Callable[[], None]) -> list[torch.Tensor | None]:
        with self._lock:
            every_set_busy = not self._free and self._count >= MAX_BUFFER_SETS
        if every_set_busy:
            wait()  # the writes in flight finish and hand their sets back
        with self._lock:
            match = next((i for i, (kind, _) in enumerate(self._free) if kind == layout), None)
            if match is not None:
                return self._free.pop(match)[1]
            while self._free and self._count >= MAX_BUFFER_SETS:  # another layout's sets make room
                self._free.pop(0)
                self._count -= 1
            self._count += 1
        return [_host_buffer(t) for t in tensors]

    def _give_back(self, layout: tuple[Any, ...], buffers: list[torch.Tensor | None]) -> None:
        with self._lock:
            self._free.append((layout, buffers))


def _layout(tensor: torch.Tensor) -> tuple[Any, ...]:
    if tensor.layout != torch.strided:
        return (str(tensor.layout),)
    return (tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.is_cuda)


def _host_buffer(tensor: torch.Tensor) -> torch.Tensor | None:
    if tensor.layout != torch.strided:
        return None
    # empty_like keeps the strides (a channels-last weight stays channels-last); pinned when the tensor is
    # on a GPU, so the copy runs asynchronously
    return torch.empty_like(tensor, device="cpu", pin_memory=tensor.is_cuda and torch.cuda.is_available())
