"""Walk the tensors of a checkpoint dict, fast.

Why: a Lightning checkpoint is a tree of several hundred plain dicts, lists and numbers (loop progress,
callback states, the resolved config, the resume state) around a few hundred tensors, and Lightning's
``apply_to_collection`` spends about 2 ms on it (its general path checks every node for dataclasses,
namedtuples and defaultdicts), against about 0.5 ms here. A background checkpoint walks the tree twice per
write, at every epoch's end: on a GPU, whose epochs can be a quarter of a second, that is time the
training waits for. Plain containers are handled here; anything else goes to ``apply_to_collection``,
so the result is the same.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection

_LEAVES = (str, bytes, int, float, bool, type(None))


def map_tensors(tree: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``tree`` with every tensor replaced by ``fn(tensor)``, containers rebuilt with their own types;
    tensors are visited in a fixed order (dicts in insertion order), the same on every call."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    kind = type(tree)
    if kind is dict or kind is OrderedDict:
        return kind((key, map_tensors(value, fn)) for key, value in tree.items())
    if kind is list:
        return [map_tensors(value, fn) for value in tree]
    if kind is tuple:
        return tuple(map_tensors(value, fn) for value in tree)
    if isinstance(tree, _LEAVES):
        return tree
    return apply_to_collection(tree, torch.Tensor, fn)  # namedtuples, dataclasses, defaultdicts, other types


def tensors_of(tree: Any) -> list[torch.Tensor]:
    """The tensors of ``tree`` in :func:`map_tensors`' order (the same walk: one place decides the order)."""
    found: list[torch.Tensor] = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        found.append(tensor)
        return tensor

    map_tensors(tree, keep)
    return found


def tensor_bytes(tree: Any) -> int:
    """The bytes of ``tree``'s tensors: about the size of its checkpoint file."""
    return sum(t.nelement() * t.element_size() for t in tensors_of(tree))
