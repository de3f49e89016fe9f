"""The last step of a pipeline split for normalisation on the device, where batches are stacked: the
image as a contiguous (H, W, C) uint8 tensor instead of ToTensorV2's (C, H, W) view.

Why: ToTensorV2 returns a transposed view of the HWC array, so the collate that stacks a batch into the
worker's shared memory copies it element by element (64 images of 224 px: 6.4 ms against 0.5 ms for
contiguous rows, measured on 2 cores). Stacked HWC is one memcpy per image; the device puts the channels
first (``PixelScaling``), where a permuted NHWC batch is already a channels-last NCHW tensor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from albumentations.pytorch import ToTensorV2


class ToTensorHWC(ToTensorV2):
    """ToTensorV2 for masks; images (H, W) or (H, W, C) -> a contiguous (H, W, C) tensor."""

    def apply(self, img: np.ndarray, **params: Any) -> torch.Tensor:
        if img.ndim not in (2, 3):
            raise ValueError(f"an image must be (H, W) or (H, W, C), got shape {img.shape}")
        if img.ndim == 2:
            img = img[:, :, None]
        return torch.from_numpy(np.ascontiguousarray(img))
