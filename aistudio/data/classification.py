"""Task datasets over validated :class:`ImageRecord` lists."""

from __future__ import annotations

import torch

from aistudio.data.images import as_tensor
from aistudio.data.record_dataset import RecordDataset
from aistudio.data.sampling import seed_transform


class ClassificationDataset(RecordDataset):
    """(image tensor CxHxW float, class index) pairs; ``transform`` is an albumentations pipeline."""

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        record, image, seed = self.load(key)
        if self.transform is not None:
            seed_transform(self.transform, seed)
            image = self.transform(image=image)["image"]
        return as_tensor(image), int(record.label)
