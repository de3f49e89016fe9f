"""Deterministic stratified split schemes (hold-out and k-fold) for dataset.json projects."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def _by_class(labels: Sequence, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    groups: dict = defaultdict(list)
    for index, label in enumerate(labels):
        groups[label].append(index)
    ordered = []
    for label in sorted(groups, key=str):
        members = np.array(groups[label])
        rng.shuffle(members)
        ordered.append(members.tolist())
    return ordered


def stratified_holdout(labels: Sequence, val_fraction: float, test_fraction: float,
                       seed: int = 0) -> list[str]:
    """Assign train/val/test per sample, keeping class proportions in every split."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    split = ["train"] * len(labels)
    for members in _by_class(labels, seed):
        n = len(members)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        if n - n_test - n_val < 1:  # keep at least one training sample per class
            n_val = max(0, min(n_val, n - n_test - 1))
        for i in members[:n_test]:
            split[i] = "test"
        for i in members[n_test:n_test + n_val]:
            split[i] = "val"
    return split


def stratified_kfold(labels: Sequence, folds: int, seed: int = 0,
                     fixed: Sequence[str] | None = None) -> list[list[str]]:
    """``folds`` split schemes: in scheme k, fold k is 'val' and the others 'train'.

    Samples marked 'test' in ``fixed`` stay 'test' in every scheme (a held-out test set).
    """
    if folds < 2:
        raise ValueError("k-fold needs at least 2 folds")
    fixed = list(fixed) if fixed is not None else ["train"] * len(labels)
    pool = [i for i, s in enumerate(fixed) if s != "test"]
    fold_of: dict[int, int] = {}
    for members in _by_class([labels[i] for i in pool], seed):
        for position, local in enumerate(members):
            fold_of[pool[local]] = position % folds
    schemes = []
    for k in range(folds):
        schemes.append(["test" if fixed[i] == "test" else ("val" if fold_of[i] == k else "train")
                        for i in range(len(labels))])
    return schemes
