"""Normalisation on the device: the loaders hand over uint8 batches and the pipeline's last value step
(``Normalize`` or ``ToFloat``) runs on the batch after it reached the GPU.

Why: a worker hands each batch to the main process through fresh shared memory, which is then pinned
and copied to the device. A float32 batch is 4x the bytes of its uint8 pixels (a 224 px batch of 128:
77 MB against 19 MB), and on a GPU machine that hand-over, not decoding, bounded the input pipeline.
The arithmetic is the same as albumentations' (``(x - mean * max) / (std * max)`` in float32), so a
run's numbers do not depend on where it is done. Only the loaders the Trainer runs are split; what reads
a dataset directly (export's parity check, example panels, prediction) keeps the whole pipeline.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PixelScaling:
    """uint8 pixels to what the network takes, per channel, in float32: ``(x - offset) * factor``
    (``Normalize``) or ``x / divisor`` (``ToFloat``), the very operations albumentations' lookup tables
    are built from, so each value is bit for bit the one the loader would have produced."""

    offset: tuple[float, ...]
    factor: tuple[float, ...] = ()
    divisor: float | None = None
    hwc: bool = False  # the uint8 images arrive channels last: (N, H, W, C) or (H, W, C) (see ToTensorHWC)
    _on_device: dict[Any, tuple[Any, Any]] = field(default_factory=dict, compare=False, repr=False)

    def __call__(self, images: Any, channels_last: bool = False) -> Any:
        """A uint8 batch (N, C, H, W), one image (C, H, W) or a list of images (detection) -> float32
        (N, C, H, W) / (C, H, W), contiguous, or in channels-last memory format for a channels-last
        network; anything else (already float: a pipeline that was not split) is returned as it is."""
        import torch

        if isinstance(images, (list, tuple)):
            return type(images)(self(image, channels_last) for image in images)
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            return images
        if self.hwc:  # channels first: a view (NHWC memory is what channels_last NCHW means)
            images = images.permute(0, 3, 1, 2) if images.dim() == 4 else images.permute(2, 0, 1)
        layout = torch.channels_last if channels_last and images.dim() == 4 else torch.contiguous_format
        floats = images.to(torch.float32, memory_format=layout)  # one kernel: the cast and the layout
        if self.divisor is not None:
            return floats.div_(self.divisor)
        offset, factor = self.constants(images.device)
        return floats.sub_(offset).mul_(factor)

    def constants(self, device: Any) -> tuple[Any, Any]:
        """(offset, factor) as (C, 1, 1) float32 tensors on ``device``, copied there once, not every step."""
        import torch

        if device not in self._on_device:
            self._on_device[device] = tuple(torch.tensor(values, dtype=torch.float32).view(-1, 1, 1).to(device)
                                            for values in (self.offset, self.factor))
        return self._on_device[device]


def _channel_values(value: Any, channels: int) -> np.ndarray | None:
    values = np.atleast_1d(np.asarray(value, dtype=np.float32))
    if values.ndim != 1 or len(values) not in (1, channels):
        return None
    return np.broadcast_to(values, (channels,)).astype(np.float32)


def scaling_of(transform: Any, channels: int) -> PixelScaling | None:
    """What a ``Normalize`` (standard) or ``ToFloat`` does to uint8 pixels, or None when it is anything
    else (another normalisation, a probability below 1, values that do not fit the channels)."""
    from albumentations import Normalize, ToFloat

    if getattr(transform, "p", 1.0) < 1.0:
        return None
    if isinstance(transform, Normalize) and transform.normalization == "standard":
        if transform.max_pixel_value is None:
            return None
        # albumentations' table for uint8: (float32(v) - mean * max) * (1 / (std * max)), all in float32
        mean = _channel_values(np.asarray(transform.mean, dtype=np.float32) * transform.max_pixel_value, channels)
        std = _channel_values(transform.std, channels)
        if mean is None or std is None:
            return None
        factor = np.reciprocal(std * np.float32(transform.max_pixel_value)).astype(np.float32)
        return PixelScaling(tuple(float(v) for v in mean), tuple(float(v) for v in factor))
    if type(transform) is ToFloat:
        return PixelScaling((0.0,) * channels, divisor=255.0 if transform.max_value is None else float(transform.max_value))
    return None


def split_scaling(pipeline: Any, channels: int, hwc: bool = False) -> tuple[Any, PixelScaling | None]:
    """(a copy of ``pipeline`` without its final value step, that step as a :class:`PixelScaling`) when
    the pipeline is an albumentations ``Compose`` ending ``[Normalize | ToFloat, ToTensorV2]``; else
    ``(pipeline, None)``: nothing after the value step may depend on it. The step is switched off
    (``p=0``: albumentations then skips it without drawing a random number), so the augmentation
    draws, and therefore a seeded run, are unchanged. ``hwc``: the copy ends in :class:`ToTensorHWC`
    (for loaders that stack images into one batch), and the scaling puts the channels first."""
    from albumentations import Compose
    from albumentations.pytorch import ToTensorV2

    transforms: Sequence[Any] = getattr(pipeline, "transforms", ())
    if type(pipeline) is not Compose or len(transforms) < 2 or type(transforms[-1]) is not ToTensorV2 \
            or transforms[-1].p < 1.0:
        return pipeline, None
    scaling = scaling_of(transforms[-2], channels)
    if scaling is None:
        return pipeline, None
    switched_off = copy.copy(transforms[-2])
    switched_off.p = 0.0
    split = copy.deepcopy(pipeline)
    # a new plain list: a pipeline instantiated without ``_convert_`` holds a ListConfig, whose deep copy
    # still shares the transform objects with the original
    to_tensor = list(split.transforms)[-1]
    if hwc:
        from aistudio.data.hwc_tensor import ToTensorHWC

        to_tensor = ToTensorHWC(transpose_mask=transforms[-1].transpose_mask)
    split.transforms = [*list(split.transforms)[:-2], switched_off, to_tensor]
    return split, replace(scaling, hwc=hwc)
