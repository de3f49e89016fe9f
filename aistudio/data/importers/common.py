"""What the importers share: relative paths, random splits for sets without one, progress."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from aistudio import AistudioError
from aistudio.data.splits import stratified_holdout

log = logging.getLogger("aistudio.import")
T = TypeVar("T")


def relative(path: Path, out_dir: Path) -> str:
    return os.path.relpath(path, out_dir)


def holdout_by_first_class(objects_per_image: list[list[str]], val_fraction: float, test_fraction: float,
                           seed: int) -> list[str]:
    """A hold-out split stratified by each image's first object class (images without objects: 'none'),
    with at least one image in every split asked for."""
    keys = [names[0] if names else "none" for names in objects_per_image]
    return fill_empty_splits(stratified_holdout(keys, val_fraction, test_fraction, seed), val_fraction, test_fraction)


def fill_empty_splits(splits: list[str], val_fraction: float, test_fraction: float) -> list[str]:
    """On a small set the fractions can round to no image at all (and training needs a val split): one image
    moves from train to each requested split left empty; a set too small for that is one clear error."""
    splits = list(splits)
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        if fraction <= 0 or name in splits:
            continue
        train = [i for i, split in enumerate(splits) if split == "train"]
        if len(train) < 2:
            raise AistudioError(f"{len(splits)} image(s) cannot be split into train, val and test (--{name} "
                                f"{fraction}) — add images, or pass --test 0 to keep only train and val")
        splits[train[-1]] = name
        log.warning("--%s %s gave no %s image for %d images: one image moved from train to %s", name, fraction,
                    name, len(splits), name)
    return splits


def progress(items: Iterable[T], total: int, what: str) -> Iterator[T]:
    """A progress bar on a terminal; otherwise a log line every 10%, for large imports."""
    if sys.stderr.isatty():
        from rich.progress import track

        yield from track(items, total=total, description=what, transient=True)
        return
    step = max(1, total // 10)
    for done, item in enumerate(items, start=1):
        yield item
        if done % step == 0 or done == total:
            log.info("%s: %d/%d", what, done, total)
