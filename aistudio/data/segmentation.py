"""Semantic segmentation dataset: (image, class-index mask) pairs, transformed together."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aistudio.data.images import as_tensor
from aistudio.data.masks import MaskClasses, read_mask
from aistudio.data.project import DatasetError, ImageRecord, Project
from aistudio.data.record_dataset import RecordDataset
from aistudio.data.sampling import seed_transform


class SegmentationDataset(RecordDataset):
    """(image float tensor CxHxW, mask int64 tensor HxW) pairs.

    Mask pixel values become class indices through the project's ``mask_values`` (identity when absent);
    values not listed become ``project.ignore_index`` (see :class:`~aistudio.data.masks.MaskClasses`). The albumentations ``transform`` receives
    ``image=`` and ``mask=`` together, so crops and flips stay aligned (masks resize with nearest).
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable[..., Any] | None = None,
                 channels: int = 3, project: Project | None = None):
        super().__init__(records, transform, channels)
        self.num_classes = project.num_classes if project else None
        self.ignore_index = project.ignore_index if project else 255
        self.mask_classes = MaskClasses(project.num_classes, project.mask_values, self.ignore_index,
                                        project.root) if project else None

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        record, image, seed = self.load(key)
        if record.mask is None:
            raise DatasetError(record.file, ["this entry has no 'mask' — semantic segmentation needs one per image"])
        mask = self.class_mask(read_mask(record.mask), record.mask)
        if self.transform is not None:
            seed_transform(self.transform, seed)
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image = as_tensor(image)
        mask = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(mask))
        return image, mask.long()

    def class_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw label pixels -> class indices (see :class:`MaskClasses`: unknown values are errors)."""
        return self.mask_classes(raw, path) if self.mask_classes is not None else raw
