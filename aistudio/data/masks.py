"""Label images for semantic segmentation: decode them and turn pixel values into class indices.

One :class:`MaskClasses` serves training and ``aistudio validate --check-images full``, so a mask that
validates is a mask that trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aistudio.data.images import ImageReadError, decode
from aistudio.data.project import DatasetError


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a label image to HxW with its raw pixel values (8- or 16-bit, palette PNGs by index)."""
    import cv2

    mask = decode(path, cv2.IMREAD_UNCHANGED, "mask")
    if mask.ndim == 3:
        mask = _single_channel(path, mask)
    return mask


def _single_channel(path: str | Path, mask: np.ndarray) -> np.ndarray:
    """OpenCV expands palette PNGs to colour; PIL keeps their indices. Grey saved as RGB is accepted too."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("P", "L", "I", "I;16"):
            return np.asarray(image)
    if all(np.array_equal(mask[:, :, 0], mask[:, :, c]) for c in range(1, mask.shape[2])):
        return mask[:, :, 0]
    raise DatasetError(path, [f"mask has {mask.shape[2]} different colour channels — a label image holds one "
                              "class value per pixel (single-channel or palette PNG); convert it"])


class MaskClasses:
    """Raw pixel value -> class index, for one project's classes, ``mask_values`` and ``ignore_index``.

    With ``mask_values`` a value not listed becomes ``ignore_index`` (Cityscapes-style label images
    keep their void values without rewriting); :meth:`unlisted` names them so validate can say so.
    Without it the pixel values are the class indices, and any other value (not the ignore value) is an
    error naming the file and the fix: training on it would teach a class that does not exist.
    """

    def __init__(self, num_classes: int, mask_values: Sequence[int] | None, ignore_index: int,
                 source: str | Path = "dataset.json"):
        values = np.arange(num_classes) if mask_values is None else np.asarray(mask_values, dtype=np.int64)
        if mask_values is not None and (
                len(values) != num_classes or len(set(values.tolist())) != len(values)
                or values.min(initial=0) < 0 or values.max(initial=0) > 65535):
            raise DatasetError(source, [f"'mask_values' {list(mask_values)} must give one distinct pixel value "
                                        f"(0..65535) per class, in class order ({num_classes} classes)"])
        self.num_classes = num_classes
        self.mask_values = None if mask_values is None else [int(v) for v in mask_values]
        self.ignore_index = ignore_index
        # label images are 8- or 16-bit, so a 65536-entry table covers every pixel value
        self.table = np.full(65536, ignore_index, dtype=_label_dtype(num_classes, ignore_index))
        self.table[values] = np.arange(num_classes)
        self.known = np.zeros(65536, dtype=bool)
        self.known[values] = True
        if 0 <= ignore_index <= 65535:
            self.known[ignore_index] = True

    def __repr__(self) -> str:
        """Stable (no address): the image check cache keys a project's checks by it."""
        return (f"MaskClasses(num_classes={self.num_classes}, mask_values={self.mask_values}, "
                f"ignore_index={self.ignore_index})")

    def __call__(self, raw: np.ndarray, path: str | Path) -> np.ndarray:
        """Class indices (ignored pixels = ``ignore_index``) of one decoded label image."""
        raw = _pixel_values(raw, path)
        if self.mask_values is None:
            # the common case costs one max(); the full lookup only runs when a value is out of range
            if raw.max(initial=0) >= self.num_classes and not self.known[raw].all():
                raise DatasetError(path, [self.not_classes(self.unlisted(raw, path))])
            if self.table.dtype == raw.dtype:
                return raw  # already class indices
        return self.table[raw]

    def unlisted(self, raw: np.ndarray, path: str | Path) -> list[int]:
        """Pixel values that are neither a class's value nor the ignore value (for validate's report)."""
        raw = _pixel_values(raw, path)
        if self.known[raw].all():
            return []
        return sorted(set(np.unique(raw).tolist()) - set(np.flatnonzero(self.known).tolist()))

    def not_classes(self, bad: list[int]) -> str:
        """The problem of pixel values ``bad`` when the pixel values are the class indices."""
        return (f"mask pixel value(s) {bad[:10]}{' ...' if len(bad) > 10 else ''} are not class indices "
                f"0..{self.num_classes - 1} nor the ignore_index {self.ignore_index} — add \"mask_values\" (the "
                "pixel value of each class, in class order) to dataset.json, e.g. re-import with "
                "`aistudio import masks ... --values`")


def _pixel_values(raw: np.ndarray, path: str | Path) -> np.ndarray:
    """8/16-bit unsigned label pixels; 32-bit PIL modes are narrowed when their values allow it."""
    if raw.dtype in (np.uint8, np.uint16):
        return raw
    if raw.size and (raw.min() < 0 or raw.max() > 65535):
        raise DatasetError(path, [f"mask pixel values span {raw.min()}..{raw.max()} — a label image holds "
                                  "8- or 16-bit class values; convert it"])
    return raw.astype(np.uint16)


def _label_dtype(num_classes: int, ignore_index: int) -> type:
    """The smallest type OpenCV resizes and albumentations crops, for class indices and the ignore value."""
    if 0 <= ignore_index <= 255 and num_classes <= 256:
        return np.uint8
    if 0 <= ignore_index <= 65535:
        return np.uint16
    return np.int32


__all__ = ["ImageReadError", "MaskClasses", "read_mask"]
