"""What every task dataset shares: validated records, an augmentation pipeline, the image channels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from aistudio.data.images import read_image
from aistudio.data.project import ImageRecord, Project
from aistudio.data.sampling import split_key


class RecordDataset(Dataset):
    """Base of the task datasets; a subclass turns one record into tensors in ``__getitem__``.

    The data module builds every task's dataset the same way (``records, transform, channels,
    project=``), so the task config can name any subclass. Keys are a plain index (evaluation) or
    ``(index, augmentation seed)`` (training): :meth:`load` reads the image for either.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable[..., Any] | None = None,
                 channels: int = 3, project: Project | None = None):
        self.records = list(records)
        self.transform = transform
        self.channels = channels

    def __len__(self) -> int:
        return len(self.records)

    def load(self, key: int | tuple[int, int]) -> tuple[ImageRecord, np.ndarray, int | None]:
        """(record, its image as HxWxC uint8, the augmentation seed or None) of a dataset key."""
        index, seed = split_key(key)
        record = self.records[index]
        return record, read_image(record.path, self.channels), seed  # the string: .file builds a Path each time
