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
    try:
        if target.exists():
            shutil.rmtree(target)  # an older or half-written copy
        os.replace(staging, target)
    except OSError:
        # another process won the race and put a complete copy in place
        shutil.rmtree(staging, ignore_errors=True)
        if not marker.is_file():
            raise
    return str(target)
