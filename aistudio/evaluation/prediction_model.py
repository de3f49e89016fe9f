"""The model half of ``predict.py``: a trained run's task module over batches of input images, its
outputs turned into the standard per-image predictions of :mod:`aistudio.evaluation.prediction_writers`.

Preprocessing is the run's validation path, from its config: images decoded as training decodes them
(``data.channels``), then ``data.eval_transform`` (the albumentations pipeline: resize, normalise...).
Results are mapped back to the original image: boxes scaled by original / transformed size, masks and
label maps resized with nearest neighbour. An image that cannot be read is not an error here: the
dataset hands back the reason, the writer callback reports it, and the batch goes on without it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from aistudio import AistudioError
from aistudio.data.images import ImageReadError, as_tensor, read_image
from aistudio.evaluation.prediction_inputs import InputImage
from aistudio.evaluation.prediction_writers import (
    ClassProbabilities,
    Detections,
    LabelMap,
    PredictedImage,
    PredictionWriter,
)

DETECTION_TASKS = ("detection", "instance_segmentation")
Failure = Callable[[InputImage, str], None]


def failure_reason(error: Exception) -> str:
    """``<path>: cannot decode this image (...) — replace the file...`` -> ``cannot decode this image (...)``:
    the file is named beside it, and the dataset.json advice does not fit every input."""
    message = str(error).split(" — ", 1)[0]
    return message.split(": ", 1)[1] if ": " in message else message


class PredictionDataset(Dataset):
    """(image tensor or None, meta) per file: ``meta`` holds the index, the original ``size`` (h, w), the
    transformed ``input_size`` and the ``error`` that kept the image out (None when it was read)."""

    def __init__(self, files: Sequence[Path], transform: Callable[..., Any] | None = None, channels: int = 3):
        self.files = list(files)
        self.transform = transform
        self.channels = channels
        self.extra = _empty_annotations(transform)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, dict[str, Any]]:
        meta: dict[str, Any] = {"index": index, "error": None}
        try:
            image = read_image(self.files[index], self.channels)
        except ImageReadError as err:
            meta["error"] = failure_reason(err)
            return None, meta
        meta["size"] = tuple(image.shape[:2])
        if self.transform is not None:
            try:
                image = self.transform(image=image, **self.extra)["image"]
            except Exception as err:  # noqa: BLE001 - one odd image (1 px wide...) must not stop the others
                meta["error"] = f"preprocessing failed ({type(err).__name__}: {str(err).strip().splitlines()[0]})"
                return None, meta
        tensor = as_tensor(image)
        meta["input_size"] = tuple(tensor.shape[-2:])
        return tensor, meta


def _empty_annotations(transform: Any) -> dict[str, list]:
    """A detection pipeline (bbox_params) wants its box fields on every call: empty ones here."""
    processor = (getattr(transform, "processors", None) or {}).get("bboxes")
    if processor is None:
        return {}
    return {"bboxes": [], **{field: [] for field in (getattr(processor.params, "label_fields", None) or [])}}


def collate_predictions(batch: Sequence[tuple[torch.Tensor | None, dict[str, Any]]],
                        stack: bool = True) -> tuple[Any, list[dict[str, Any]]]:
    """(images, metas): the readable images stacked (a list for detectors, whose inputs may differ in
    size), and every sample's meta, failed ones included."""
    images = [image for image, _ in batch if image is not None]
    metas = [meta for _, meta in batch]
    if stack:
        return (torch.stack(images) if images else torch.zeros(0)), metas
    return images, metas


def build_loader(config: dict[str, Any], task: str, files: Sequence[Path], batch_size: int) -> DataLoader:
    """The run's validation preprocessing over ``files``, with its DataLoader workers and pinning."""
    from hydra.utils import instantiate

    from aistudio.data.datamodule import default_num_workers
    from aistudio.runs.stop import reap_workers_at_exit

    data = config["data"]
    # plain lists, not OmegaConf ones: Normalize reads mean/std on every call (a fifth of its time as ListConfig)
    transform = instantiate(data["eval_transform"], _convert_="all") if data.get("eval_transform") else None
    dataset = PredictionDataset(files, transform, int(data.get("channels") or 3))
    workers = data.get("num_workers", "auto")
    workers = default_num_workers() if workers in (None, "auto") else int(workers)
    pin = data.get("pin_memory", "auto")
    pin = torch.cuda.is_available() if pin == "auto" else bool(pin)
    if workers > 0:
        reap_workers_at_exit()  # they ignore SIGTERM (see init_worker)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin,
                      collate_fn=functools.partial(collate_predictions, stack=task not in DETECTION_TASKS),
                      worker_init_fn=init_prediction_worker if workers > 0 else None)


def init_prediction_worker(worker_id: int) -> None:
    """A training worker's set-up (:func:`aistudio.data.datamodule.init_worker`), and OpenCV on one thread:
    each worker is one core's work; OpenCV's own thread pool would take more cores from the model."""
    import cv2

    from aistudio.data.datamodule import init_worker

    init_worker(worker_id)
    cv2.setNumThreads(1)


class PredictionModule(pl.LightningModule):
    """The task module's own ``predict_step`` on the readable images of a batch (none: no call)."""

    def __init__(self, task_module: pl.LightningModule):
        super().__init__()
        self.task = task_module

    def predict_step(self, batch: tuple[Any, list[dict[str, Any]]], batch_idx: int) -> Any:
        images, _ = batch
        return self.task.predict_step(images, batch_idx) if len(images) else None


# -- model outputs -> standard predictions, in the original image's coordinates -----------------------
def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) integer or bool ``array`` at ``size`` (h, w), nearest neighbour (pixel centres)."""
    import cv2

    if tuple(array.shape[:2]) == tuple(size):
        return array
    source = array.astype(np.uint8) if array.dtype == bool else array
    resized = cv2.resize(source, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST_EXACT)
    return resized.astype(bool) if array.dtype == bool else resized


def detections_in_original(output: dict[str, torch.Tensor], size: tuple[int, int],
                           input_size: tuple[int, int]) -> Detections:
    """A torchvision detector's output (boxes xyxy in the transformed image, labels 1..K, masks) in the
    original image: boxes scaled by original / transformed size and clipped, labels 0-based."""
    (height, width), (in_height, in_width) = size, input_size
    boxes = output["boxes"].detach().float().cpu().numpy().reshape(-1, 4).copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2] * (width / in_width), 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2] * (height / in_height), 0, height)
    masks = output.get("masks")
    if masks is not None:
        masks = masks.detach().cpu().numpy()
        masks = masks.reshape(len(boxes), *masks.shape[-2:]).astype(bool)
        masks = np.stack([resize_nearest(m, size) for m in masks]) if len(masks) else np.zeros((0, height, width), bool)
    return Detections(boxes, output["scores"].detach().float().cpu().numpy(),
                      output["labels"].detach().cpu().numpy().astype(np.int64) - 1, masks)


def standard_predictions(task: str, output: Any, metas: list[dict[str, Any]]) -> list[Any]:
    """One standard prediction per readable image of a batch (``metas``: theirs, in batch order)."""
    if task == "classification":
        return [ClassProbabilities(p) for p in output.detach().float().cpu().numpy()]
    if task in DETECTION_TASKS:
        return [detections_in_original(o, m["size"], m["input_size"]) for o, m in zip(output, metas)]
    if task == "semantic_segmentation":
        labels = output.argmax(dim=1)
        labels = labels.to(torch.uint8 if output.shape[1] <= 256 else torch.int32).cpu().numpy()
        return [LabelMap(resize_nearest(m, meta["size"])) for m, meta in zip(labels, metas)]
    raise AistudioError(f"task {task!r} has no prediction format")


class BatchWriter(BasePredictionWriter):
    """Hands each batch's predictions to the writers as it comes (nothing is kept) and reports the
    images that could not be read."""

    def __init__(self, task: str, images: Sequence[InputImage], writers: Sequence[PredictionWriter],
                 on_failure: Failure | None = None):
        super().__init__(write_interval="batch")
        self.task, self.images, self.writers, self.on_failure = task, list(images), list(writers), on_failure
        self.predicted = 0
        self.failed: list[dict[str, str]] = []

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        _, metas = batch
        for meta in metas:
            if meta["error"] is not None:
                item = self.images[meta["index"]]
                self.failed.append({"file": item.name, "path": str(item.file), "reason": meta["error"]})
                if self.on_failure is not None:
                    self.on_failure(item, meta["error"])
        readable = [meta for meta in metas if meta["error"] is None]
        if not readable:
            return
        for meta, standard in zip(readable, standard_predictions(self.task, prediction, readable)):
            item = self.images[meta["index"]]
            height, width = meta["size"]
            image = PredictedImage(item.name, item.stem, item.image_id, int(width), int(height), item.file)
            for writer in self.writers:
                writer.write(image, standard)
            self.predicted += 1


def run_predictions(config: dict[str, Any], module: Any, task: str, images: Sequence[InputImage],
                    writers: Sequence[PredictionWriter], batch_size: int,
                    on_failure: Failure | None = None) -> dict[str, Any]:
    """Predict every image with the run's accelerator, precision and progress bar; the writers get each
    batch as it ends. Returns the counts, the failures and the timing."""
    from aistudio.training.trainer import build_evaluation_trainer

    loader = build_loader(config, task, [i.file for i in images], batch_size)
    writer = BatchWriter(task, images, writers, on_failure)
    trainer = build_evaluation_trainer(config, extra_callbacks=[writer])
    started = time.perf_counter()
    trainer.predict(PredictionModule(module), dataloaders=loader, return_predictions=False)
    seconds = time.perf_counter() - started
    return {"predicted": writer.predicted, "failed": writer.failed, "seconds": seconds,
            "num_workers": loader.num_workers, "batch_size": batch_size,
            "device": str(trainer.strategy.root_device), "precision": str(trainer.precision)}
