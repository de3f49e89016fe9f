"""Synthetic classification projects of any size, for scale tests and benchmarks (``aistudio synthetic``).

Each image is a small PNG of its class's colour plus noise, with its own index written into its first
pixels, so no two files are alike (a cache keyed by content or a deduplicating store sees N files). The
files are encoded by a pool of forked processes in fixed chunks seeded by (seed, chunk), so the same arguments
write the same bytes however many cores there are. ``files=False`` writes the dataset.json alone: the
listing of a project whose images live elsewhere (the ``check_images=off`` metadata path).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from aistudio import AistudioError
from aistudio.data.file_checks import can_fork, cores
from aistudio.data.project import DATASET_FILE

CHUNK = 2_000  # images per pool task (and per seed)
POOL_FROM = 2 * CHUNK  # fewer images are written in this process: a pool costs more than it saves
SPLIT_PATTERN = ("train",) * 8 + ("val", "test")  # 80 / 10 / 10, interleaved so every class has each


def class_names(classes: int) -> list[str]:
    return [f"class_{k:03d}" for k in range(classes)]


def entry_file(index: int, label: int) -> str:
    """The image's path relative to the project (sub-folders of at most 1,000 files: kind to every file system)."""
    return f"images/{label:03d}/{index // 1000:04d}/{index:07d}.png"


def write_synthetic_project(root: str | Path, images: int, *, classes: int = 10, size: int = 32, files: bool = True,
                            seed: int = 0, workers: int | None = None) -> Path:
    """Write a classification project of ``images`` entries under ``root``; return its dataset.json.

    ``files=False`` writes only dataset.json (entries whose files do not exist). ``workers``: processes
    encoding the images (default: one per core)."""
    if images < 1 or classes < 1 or size < 2:
        raise AistudioError(f"synthetic project: need --images >= 1, --classes >= 1 and --size >= 2 (got {images}, "
                            f"{classes}, {size})")
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    if files:
        _write_images(root, images, classes, size, seed, workers)
    return _write_listing(root, images, classes, size)


def _write_listing(root: Path, images: int, classes: int, size: int) -> Path:
    """dataset.json, one entry per line (1M entries in a few seconds; readable and diffable)."""
    names = class_names(classes)
    head = json.dumps({"version": 1, "classes": names, "split_schemes": ["holdout"]})[:-1]
    lines = [json.dumps({"file": entry_file(i, i % classes), "width": size, "height": size, "label": names[i % classes],
                         "split": [SPLIT_PATTERN[(i // classes) % len(SPLIT_PATTERN)]]}) for i in range(images)]
    from aistudio.runs.atomic import atomic_write_text

    path = root / DATASET_FILE
    atomic_write_text(path, head + ', "images": [\n' + ",\n".join(lines) + "\n]}\n")
    return path


def _write_images(root: Path, images: int, classes: int, size: int, seed: int, workers: int | None) -> None:
    for label, block in {(i % classes, i // 1000) for i in range(images)}:
        (root / entry_file(block * 1000, label)).parent.mkdir(parents=True, exist_ok=True)
    chunks = [(str(root), start, min(start + CHUNK, images), classes, size, seed) for start in range(0, images, CHUNK)]
    workers = workers or cores()
    if images < POOL_FROM or workers < 2 or not can_fork():  # forked like the image checks, for the same reasons
        for chunk in chunks:
            _write_chunk(*chunk)
        return
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        for _ in pool.map(_write_chunk, *zip(*chunks)):
            pass


def _write_chunk(root: str, start: int, stop: int, classes: int, size: int, seed: int) -> int:
    """Encode and write images ``start..stop-1`` (one generator per chunk: the same bytes on any core count)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng([seed, start])
    colours = _class_colours(classes)
    count = stop - start
    pixels = rng.integers(-48, 48, size=(count, size, size, 3), dtype=np.int16)
    labels = np.arange(start, stop) % classes
    pixels = np.clip(pixels + colours[labels][:, None, None, :], 0, 255).astype(np.uint8)
    index_bytes = np.arange(start, stop, dtype="<u4").view(np.uint8).reshape(count, 4)
    for offset, (image, index) in enumerate(zip(pixels, range(start, stop))):
        flat = image.reshape(-1)
        flat[:4] = index_bytes[offset]  # the index itself: every file differs from every other
        ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise RuntimeError(f"cannot encode synthetic image {index}")
        with open(os.path.join(root, entry_file(index, index % classes)), "wb") as handle:
            handle.write(encoded.tobytes())
    return count


def _class_colours(classes: int):
    """One colour (BGR, int16) per class, evenly spread around the hue circle."""
    import colorsys

    import numpy as np

    return np.array([[round(255 * c) for c in reversed(colorsys.hsv_to_rgb(k / classes, 0.8, 0.85))]
                     for k in range(classes)], dtype=np.int16)
