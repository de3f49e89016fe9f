"""Semantic segmentation dataset: (image, class-index mask) pairs, transformed together."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from aistudio.data.images import ImageReadError, read_encoded, read_image
from aistudio.data.project import DatasetError, ImageRecord, Project
from aistudio.data.sampling import seed_transform, split_key


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a label image to HxW with its raw pixel values (8- or 16-bit, palette PNGs by index)."""
    import cv2

    mask = cv2.imdecode(read_encoded(path, "mask"), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ImageReadError(f"{path}: cannot decode this mask (corrupt or not an image) — replace the file or "
                             "remove its entry from dataset.json")
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


def class_lookup(num_classes: int, mask_values: Sequence[int] | None, ignore_index: int,
                 source: str | Path = "dataset.json") -> np.ndarray | None:
    """Raw pixel value -> class index table (unlisted values -> ``ignore_index``); None means identity."""
    if mask_values is None:
        return None
    values = np.asarray(mask_values, dtype=np.int64)
    if (len(values) != num_classes or len(set(values.tolist())) != len(values)
            or values.min(initial=0) < 0 or values.max(initial=0) > 65535):
        raise DatasetError(source, [f"'mask_values' {list(mask_values)} must give one distinct pixel value "
                                    f"(0..65535) per class, in class order ({num_classes} classes)"])
    table = np.full(65536, ignore_index, dtype=_label_dtype(num_classes, ignore_index))
    table[values] = np.arange(num_classes)
    return table


def _label_dtype(num_classes: int, ignore_index: int) -> type:
    """The smallest type OpenCV resizes and albumentations crops, for class indices and the ignore value."""
    if 0 <= ignore_index <= 255 and num_classes <= 256:
        return np.uint8
    if 0 <= ignore_index <= 65535:
        return np.uint16
    return np.int32


class SegmentationDataset(Dataset):
    """(image float tensor CxHxW, mask int64 tensor HxW) pairs.

    Mask pixel values become class indices through the project's ``mask_values`` (identity when absent);
    values not listed become ``project.ignore_index``. The albumentations ``transform`` receives
    ``image=`` and ``mask=`` together, so crops and flips stay aligned (masks resize with nearest).
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable[..., Any] | None = None,
                 channels: int = 3, project: Project | None = None):
        self.records = list(records)
        self.transform = transform
        self.channels = channels
        self.num_classes = project.num_classes if project else None
        self.ignore_index = project.ignore_index if project else 255
        mask_values = project.mask_values if project else None
        self.lookup = class_lookup(project.num_classes, mask_values, self.ignore_index,
                                   project.root) if project and mask_values else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = split_key(key)
        record = self.records[index]
        if record.mask is None:
            raise DatasetError(record.file, ["this entry has no 'mask' — semantic segmentation needs one per image"])
        image = read_image(record.file, self.channels)
        mask = self.class_mask(read_mask(record.mask), record.mask)
        if self.transform is not None:
            seed_transform(self.transform, seed)
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if not isinstance(image, torch.Tensor):
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
        mask = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(mask))
        return image, mask.long()

    def class_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw label pixels -> class indices; without ``mask_values`` a value that is neither a class
        index nor the ignore value is an error (it would be silently trained on as a wrong class)."""
        if self.lookup is not None:
            return self.lookup[raw]
        if self.num_classes is not None and raw.max(initial=0) >= self.num_classes:
            bad = sorted(set(np.unique(raw).tolist()) - set(range(self.num_classes)) - {self.ignore_index})
            if bad:
                raise DatasetError(path, [
                    f"mask pixel value(s) {bad[:10]} are not class indices 0..{self.num_classes - 1} nor the "
                    f"ignore_index {self.ignore_index} — add \"mask_values\" (the pixel value of each class, in "
                    "class order) to dataset.json, e.g. re-import with `aistudio import masks ... --values`"])
        return raw
