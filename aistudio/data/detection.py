"""Detection / instance segmentation datasets: images with torchvision-style target dicts.

Targets: ``boxes`` (N, 4) float xyxy pixels, ``labels`` (N,) int64 in 1..K (0 is torchvision's
background), ``masks`` (N, H, W) uint8 for instance segmentation. Crowd regions are left out of
training targets. Batches are lists (images may differ in size; the model resizes them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from aistudio.data.annotations import ObjectRecord
from aistudio.data.images import as_tensor
from aistudio.data.project import ImageRecord, Project
from aistudio.data.record_dataset import RecordDataset
from aistudio.data.sampling import seed_transform


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Polygons or RLE (compressed or not) -> a (height, width) uint8 mask."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation, counts=segmentation["counts"].encode())
    return mask_utils.decode(rle).astype(np.uint8)


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    """A list of images and a list of targets (detection models take variable-size images)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


class DetectionDataset(RecordDataset):
    """Images + boxes (+ instance masks with ``masks=True``) through an albumentations pipeline.

    The pipeline is called with ``bboxes`` (COCO xywh), ``labels`` and ``ids`` (to keep masks paired
    with the boxes that survive cropping) and ``masks``; boxes that vanish are dropped, so an image
    can end with no objects, which the models accept.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable[..., Any] | None = None,
                 channels: int = 3, project: Project | None = None, masks: bool = False):
        super().__init__(records, transform, channels)
        self.masks = masks

    def _objects(self, record: ImageRecord) -> list[ObjectRecord]:
        return [o for o in record.objects if not o.iscrowd]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        record, image, seed = self.load(key)
        height, width = image.shape[:2]
        objects = self._objects(record)
        boxes = [list(o.bbox) for o in objects]
        labels = [o.category + 1 for o in objects]
        masks = [decode_segmentation(o.segmentation, height, width) for o in objects] if self.masks else []
        ids = list(range(len(objects)))
        if self.transform is not None:
            seed_transform(self.transform, seed)
            kwargs: dict[str, Any] = {"image": image, "bboxes": boxes, "labels": labels, "ids": ids}
            if self.masks:
                kwargs["masks"] = masks
            out = self.transform(**kwargs)
            image, boxes = out["image"], out["bboxes"]
            labels, ids = [int(v) for v in out["labels"]], [int(v) for v in out["ids"]]
            if self.masks:
                masks = [out["masks"][i] for i in ids]
        image = as_tensor(image)
        box_tensor = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        box_tensor[:, 2:] += box_tensor[:, :2]  # xywh -> xyxy
        target = {"boxes": box_tensor, "labels": torch.as_tensor(list(labels), dtype=torch.int64),
                  "image_id": torch.tensor(record.index)}
        if self.masks:
            size = image.shape[-2:]
            target["masks"] = (torch.stack([torch.as_tensor(np.asarray(m), dtype=torch.uint8) for m in masks])
                               if masks else torch.zeros((0, *size), dtype=torch.uint8))
        return image, target
