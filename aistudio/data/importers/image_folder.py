"""Importers that turn common on-disk layouts into dataset.json projects."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from aistudio import AistudioError
from aistudio.data.project import write_project
from aistudio.data.splits import stratified_holdout, stratified_kfold

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def import_image_folder(source: str | Path, out: str | Path | None = None, *, val_fraction: float = 0.15,
                        test_fraction: float = 0.15, folds: int = 0, seed: int = 0) -> Path:
    """One sub-folder per class -> dataset.json with a stratified hold-out split scheme.

    With ``folds`` >= 2, k more split schemes are added (k-fold over train+val, same test set).
    The dataset.json goes into ``out`` (default: ``source``) with paths relative to it.
    """
    source = Path(source).expanduser().resolve()
    out_dir = Path(out).expanduser().resolve() if out else source
    if not source.is_dir():
        raise AistudioError(f"{source}: not a folder — pass a folder with one sub-folder per class")
    classes = sorted(d.name for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[tuple[Path, str]] = []
    for name in classes:
        found = sorted(p for p in (source / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            log.warning("class folder %s holds no images; skipped", source / name)
        files += [(p, name) for p in found]
    classes = sorted({name for _, name in files})
    if len(classes) < 2:
        raise AistudioError(f"{source}: found {len(classes)} class folder(s) with images — an image folder "
                            "needs one sub-folder per class and at least two classes")
    labels = [name for _, name in files]
    holdout = stratified_holdout(labels, val_fraction, test_fraction, seed)
    schemes = [holdout] + (stratified_kfold(labels, folds, seed, fixed=holdout) if folds >= 2 else [])
    names = [f"holdout-seed{seed}"] + [f"fold-{k + 1}-of-{folds}" for k in range(folds if folds >= 2 else 0)]
    images = [{"file": os.path.relpath(path, out_dir), "label": label,
               "split": [scheme[i] for scheme in schemes]} for i, (path, label) in enumerate(files)]
    written = write_project(out_dir, classes, images, split_schemes=names, source=str(source))
    log.info("wrote %s: %d images, %d classes, %d split scheme(s)", written, len(images), len(classes), len(schemes))
    return written
