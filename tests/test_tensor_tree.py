"""The checkpoint tensor walk gives what Lightning's apply_to_collection gives, on every container kind."""

from __future__ import annotations

from collections import OrderedDict, defaultdict, namedtuple
from dataclasses import dataclass

import torch
from lightning_utilities.core.apply_func import apply_to_collection

from aistudio.training.tensor_tree import map_tensors, tensor_bytes, tensors_of

Pair = namedtuple("Pair", "first second")


@dataclass
class State:
    weights: torch.Tensor
    note: str


def mixed_tree() -> dict:
    counts = defaultdict(list)
    counts["a"].append(torch.arange(3))
    return {
        "epoch": 3, "name": "run", "ratio": 0.5, "flag": True, "nothing": None, "raw": b"\x00",
        "state_dict": OrderedDict([("w", torch.ones(2, 2)), ("b", torch.zeros(2))]),
        "optimizer_states": [{"state": {0: {"momentum_buffer": torch.full((4,), 2.0)}}, "param_groups": [{"lr": 0.1}]}],
        "pair": Pair(torch.tensor([1.5]), (torch.tensor([7], dtype=torch.int64), "x")),
        "dataclass": State(torch.eye(3), "kept"),
        "defaultdict": counts,
        "half": torch.ones(5, dtype=torch.float16),
    }


def test_the_walk_visits_the_tensors_apply_to_collection_visits_in_the_same_order():
    tree = mixed_tree()
    expected: list[torch.Tensor] = []
    apply_to_collection(tree, torch.Tensor, lambda t: expected.append(t) or t)
    found = tensors_of(tree)
    assert len(found) == len(expected) == 8
    assert all(a is b for a, b in zip(found, expected, strict=True))
    assert tensor_bytes(tree) == sum(t.nelement() * t.element_size() for t in expected)


def test_the_map_rebuilds_every_container_with_its_own_type_and_keeps_everything_else():
    tree = mixed_tree()
    mapped = map_tensors(tree, lambda t: t + 1)
    reference = apply_to_collection(tree, torch.Tensor, lambda t: t + 1)
    assert type(mapped["state_dict"]) is OrderedDict and list(mapped["state_dict"]) == ["w", "b"]
    assert isinstance(mapped["pair"], Pair) and isinstance(mapped["pair"].second, tuple)
    assert isinstance(mapped["dataclass"], State) and mapped["dataclass"].note == "kept"
    assert isinstance(mapped["defaultdict"], defaultdict)
    for key in ("epoch", "name", "ratio", "flag", "nothing", "raw"):
        assert mapped[key] == tree[key] and type(mapped[key]) is type(tree[key])
    assert all(torch.equal(a, b) for a, b in zip(tensors_of(mapped), tensors_of(reference), strict=True))
    assert all(torch.equal(a, b + 1) for a, b in zip(tensors_of(mapped), tensors_of(tree), strict=True))
    assert torch.equal(tree["state_dict"]["w"], torch.ones(2, 2))  # the input is left as it was
