"""Folders of images and label images (same file stem): semantic masks, optionally instances.

The label images keep their pixel values; dataset.json records which value is which class
(``mask_values``), so nothing is rewritten. With ``instances=True`` every connected component of a
non-background class becomes an object (box + polygon), for instance segmentation and detection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aistudio import AistudioError
from aistudio.data.importers.common import log, progress, relative
from aistudio.data.importers.image_folder import IMAGE_SUFFIXES
from aistudio.data.masks import MaskClasses
from aistudio.data.project import write_project
from aistudio.data.splits import stratified_holdout


def _read_label(path: Path) -> np.ndarray:
    import cv2

    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise AistudioError(f"{path}: cannot decode this label image")
    if label.ndim == 3:
        raise AistudioError(f"{path}: label images must have one channel (a class value per pixel)")
    return label


def component_objects(index_mask: np.ndarray, classes: list[str], background: int | None,
                      min_area: int = 4) -> list[dict[str, Any]]:
    """Connected components (8-neighbour) of each class except ``background`` -> objects with polygons."""
    import cv2

    objects = []
    for class_index, name in enumerate(classes):
        if class_index == background:
            continue
        binary = (index_mask == class_index).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        for component in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[component])
            if area < min_area:
                continue
            contours, _ = cv2.findContours((labels == component).astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
            if polygons:
                objects.append({"class": name, "bbox": [x, y, w, h], "segmentation": polygons, "iscrowd": 0,
                                "area": area})
    return objects


def import_mask_folder(images_dir: str | Path, masks_dir: str | Path, out: str | Path | None = None, *,
                       classes: list[str] | None = None, mask_values: list[int] | None = None,
                       ignore_index: int = 255, instances: bool = False, background: int | None = 0,
                       val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0) -> Path:
    """Pair ``images_dir/<stem>.*`` with ``masks_dir/<stem>.*``; write dataset.json into ``out``.

    ``mask_values``: the pixel value of each class, in class order (default: the distinct values found,
    sorted; identity when they are 0..K-1). ``classes``: names (default ``class_<value>``).
    """
    images_dir = Path(images_dir).expanduser().resolve()
    masks_dir = Path(masks_dir).expanduser().resolve()
    out_dir = Path(out).expanduser().resolve() if out else images_dir.parent
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    missing = [p.name for p in images if p.stem not in masks]
    if not images or missing:
        raise AistudioError(f"{masks_dir}: no label image for {len(missing)} image(s), e.g. {missing[:3]} — "
                            "labels must share their image's file stem" if missing else
                            f"{images_dir}: no images found")
    labels = {p.stem: _read_label(masks[p.stem]) for p in progress(images, len(images), "reading label images")}
    if mask_values is None:
        found = sorted({int(v) for label in labels.values() for v in np.unique(label)} - {ignore_index})
        mask_values = found
    if classes is None:
        classes = [f"class_{v}" for v in mask_values]
    if len(classes) != len(mask_values):
        raise AistudioError(f"{len(classes)} class names for {len(mask_values)} mask values {mask_values} — "
                            "give one name per value")
    identity = mask_values == list(range(len(mask_values)))
    lookup = MaskClasses(len(mask_values), mask_values, ignore_index, masks_dir).table  # the training table
    split = stratified_holdout(["all"] * len(images), val_fraction, test_fraction, seed)
    entries = []
    for image, part in zip(images, split):
        label = labels[image.stem]
        entry: dict[str, Any] = {"file": relative(image, out_dir), "mask": relative(masks[image.stem], out_dir),
                                 "width": int(label.shape[1]), "height": int(label.shape[0]), "split": [part]}
        if instances:
            entry["objects"] = component_objects(lookup[label], classes, background)
        entries.append(entry)
    extra: dict[str, Any] = {"ignore_index": ignore_index, "source": str(images_dir)}
    if not identity:
        extra["mask_values"] = mask_values
    written = write_project(out_dir, classes, entries, split_schemes=[f"holdout-seed{seed}"], **extra)
    log.info("wrote %s: %d image/mask pairs, classes %s (values %s)%s", written, len(entries), classes,
             mask_values, f", {sum(len(e['objects']) for e in entries)} instances" if instances else "")
    return written
