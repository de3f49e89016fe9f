"""Task datasets over validated :class:`ImageRecord` lists."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from aistudio.data.images import as_tensor, read_image
from aistudio.data.project import ImageRecord, Project
from aistudio.data.sampling import seed_transform, split_key


class ClassificationDataset(Dataset):
    """(image tensor CxHxW float, class index) pairs; ``transform`` is an albumentations pipeline."""

    def __init__(self, records: Sequence[ImageRecord], transform: Callable[..., Any] | None = None,
                 channels: int = 3, project: Project | None = None):
        self.records = list(records)
        self.transform = transform
        self.channels = channels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = split_key(key)
        record = self.records[index]
        image = read_image(record.file, self.channels)
        if self.transform is not None:
            seed_transform(self.transform, seed)
            image = self.transform(image=image)["image"]
        return as_tensor(image), int(record.label)
