"""Built-in demo datasets, materialised once as ordinary dataset.json projects in a cache folder.

They then go through exactly the same loading, validation and training path as user data.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from aistudio.data.project import DATASET_FILE, write_project
from aistudio.data.splits import stratified_holdout, stratified_kfold

log = logging.getLogger(__name__)

DIGITS_VERSION = "digits-v1"


def publish(staging: Path, target: Path) -> None:
    """Move a fully written dataset folder into place; safe when several jobs materialise it at once."""
    try:
        if target.exists():
            shutil.rmtree(target)  # an older or half-written copy
        os.replace(staging, target)
    except OSError:
        # another process won the race and put a complete copy in place
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / DATASET_FILE).is_file():
            raise
DIGITS_FOLDS = 5


def digits_project(root: str | Path) -> str:
    """scikit-learn's 1,797 real 8x8 handwritten digits as a project under ``root/digits``.

    Split schemes: 0 = fixed stratified hold-out (70% train / 15% val / 15% test, seed 0);
    1..5 = stratified 5-fold cross-validation over train+val with the same test set.
    Returns the project folder. Safe when several jobs materialise it at once.
    """
    target = Path(root).expanduser() / "digits"
    marker = target / DATASET_FILE
    if marker.is_file() and DIGITS_VERSION in marker.read_text(encoding="utf-8")[:300]:
        return str(target)
    import cv2
    from sklearn.datasets import load_digits

    log.info("Materialising scikit-learn digits as a dataset.json project in %s", target)
    digits = load_digits()
    labels = [int(y) for y in digits.target]
    holdout = stratified_holdout(labels, val_fraction=0.15, test_fraction=0.15, seed=0)
    folds = stratified_kfold(labels, DIGITS_FOLDS, seed=0, fixed=holdout)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".digits-", dir=target.parent))
    images = []
    for index, (pixels, label) in enumerate(zip(digits.images, labels)):
        relative = f"images/{label}/{index:04d}.png"
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        gray = (pixels * (255.0 / 16.0)).round().clip(0, 255).astype("uint8")
        cv2.imwrite(str(staging / relative), gray)
        images.append({"file": relative, "width": 8, "height": 8, "label": str(label),
                       "split": [holdout[index]] + [scheme[index] for scheme in folds]})
    write_project(staging, [str(c) for c in range(10)], images,
                  split_schemes=["holdout-70-15-15"] + [f"fold-{k + 1}-of-{DIGITS_FOLDS}" for k in range(DIGITS_FOLDS)],
                  generator=DIGITS_VERSION, source="sklearn.datasets.load_digits (UCI ML hand-written digits)")
    publish(staging, target)
    return str(target)


SHAPES_VERSION = "shapes-v1"
SHAPE_CLASSES = ["circle", "square", "triangle"]


def _draw_shape(kind: int, rng, size: int, placed: list[tuple[int, int, int, int]]):
    """A random shape mask that does not touch the shapes already placed (None after 30 tries)."""
    import cv2
    import numpy as np

    for _ in range(30):
        extent = int(rng.integers(size // 8, size // 3))
        x0 = int(rng.integers(0, size - extent))
        y0 = int(rng.integers(0, size - extent))
        box = (x0 - 2, y0 - 2, x0 + extent + 2, y0 + extent + 2)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            continue
        mask = np.zeros((size, size), np.uint8)
        if kind == 0:
            cv2.circle(mask, (x0 + extent // 2, y0 + extent // 2), extent // 2, 1, -1)
        elif kind == 1:
            cv2.rectangle(mask, (x0, y0), (x0 + extent - 1, y0 + extent - 1), 1, -1)
        else:
            apex = x0 + int(rng.integers(0, extent))
            points = np.array([[apex, y0], [x0, y0 + extent - 1], [x0 + extent - 1, y0 + extent - 1]], np.int32)
            cv2.fillPoly(mask, [points], 1)
        placed.append(box)
        return mask
    return None


def shapes_project(root: str | Path, task: str = "detection", num_images: int = 600, image_size: int = 128,
                   seed: int = 0) -> str:
    """Generated shapes (circles, squares, triangles of random colour, size and position on noisy
    backgrounds), materialised once under ``root/shapes-<size>-<n>-<seed>``, deterministic from ``seed``.

    ``dataset.json`` holds boxes + instance polygons (classes circle/square/triangle) for detection and
    instance segmentation; ``semantic.json`` the class-index masks (with a background class). Returns
    the file for ``task``. Split: 70/15/15.
    """
    import cv2
    import numpy as np

    target = Path(root).expanduser() / f"shapes-{image_size}-{num_images}-{seed}"
    wanted = target / ("semantic.json" if task == "semantic_segmentation" else DATASET_FILE)
    marker = target / DATASET_FILE
    if marker.is_file() and SHAPES_VERSION in marker.read_text(encoding="utf-8")[:300]:
        return str(wanted)
    log.info("Generating %d shape images (%dpx, seed %d) in %s", num_images, image_size, seed, target)
    rng = np.random.default_rng(seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".shapes-", dir=target.parent))
    (staging / "images").mkdir()
    (staging / "masks").mkdir()
    split = stratified_holdout(["all"] * num_images, 0.15, 0.15, seed)
    object_entries, semantic_entries = [], []
    for index in range(num_images):
        level = rng.integers(40, 200)
        image = np.clip(rng.normal(level, 25, (image_size, image_size, 3)), 0, 255).astype(np.uint8)
        semantic = np.zeros((image_size, image_size), np.uint8)
        placed: list[tuple[int, int, int, int]] = []
        objects = []
        for _ in range(int(rng.integers(1, 5))):
            kind = int(rng.integers(0, 3))
            mask = _draw_shape(kind, rng, image_size, placed)
            if mask is None:
                continue
            colour = rng.integers(0, 256, 3)
            while np.abs(colour.astype(int) - int(level)).max() < 60:  # keep shapes visible
                colour = rng.integers(0, 256, 3)
            image[mask > 0] = colour
            semantic[mask > 0] = kind + 1
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            x, y, w, h = cv2.boundingRect(mask)
            objects.append({"class": SHAPE_CLASSES[kind], "bbox": [x, y, w, h], "iscrowd": 0,
                            "segmentation": [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]})
        name = f"{index:05d}.png"
        cv2.imwrite(str(staging / "images" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(staging / "masks" / name), semantic)
        common = {"file": f"images/{name}", "width": image_size, "height": image_size, "split": [split[index]]}
        object_entries.append({**common, "objects": objects})
        semantic_entries.append({**common, "mask": f"masks/{name}"})
    write_project(staging / "semantic.json", ["background", *SHAPE_CLASSES], semantic_entries,
                  split_schemes=["holdout-70-15-15"], generator=SHAPES_VERSION, ignore_index=255)
    write_project(staging, SHAPE_CLASSES, object_entries, split_schemes=["holdout-70-15-15"],
                  generator=SHAPES_VERSION)
    publish(staging, target)
    return str(wanted)
