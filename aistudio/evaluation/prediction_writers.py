"""Prediction output formats, written one image at a time from standard per-image predictions.

The writers know nothing of the model that made the predictions (no torch here): whatever runs a
model — the Lightning module of a run (:mod:`aistudio.evaluation.prediction_model`), later an exported
ONNX model — hands them, for each image, its :class:`PredictedImage` (name, output stem, COCO id,
original size) and one of

- :class:`ClassProbabilities`: ``probabilities`` (K,), one per class;
- :class:`Detections`: ``boxes`` (N, 4) xyxy in the original image's pixels, ``scores`` (N,), ``labels``
  (N,) 0-based class indices, optional ``masks`` (N, H, W) bool at the original size;
- :class:`LabelMap`: ``labels`` (H, W) class indices at the original size.

Files (in an :class:`OutputFolder`): classification ``predictions.csv`` + ``predictions.json``; detection
and instance segmentation COCO results ``predictions.json`` + ``images.json`` (the COCO ``images`` and
``categories`` they refer to); semantic ``masks/<stem>.png``; with overlays ``overlays/<stem>.jpg``.
Everything is streamed to disk per image: no writer keeps the predictions.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from aistudio import AistudioError

SUMMARY_FILE = "summary.json"
OVERLAY_DIR = "overlays"
MASK_DIR = "masks"
MASK_FORMATS = ("index", "values")
OVERLAY_ALPHA = 0.45
# 20 distinct colours (RGB), one per class index, repeating after 20
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128))


@dataclass(frozen=True)
class PredictedImage:
    name: str  # relative path as the input named it (outputs and messages use it)
    stem: str  # output name without suffix, unique within one prediction
    image_id: int  # COCO image id
    width: int  # the original image's size
    height: int
    file: Path | None = None  # where the original is (overlays read it again)


@dataclass
class ClassProbabilities:
    probabilities: np.ndarray  # (K,)


@dataclass
class Detections:
    boxes: np.ndarray  # (N, 4) xyxy, original pixels
    scores: np.ndarray  # (N,)
    labels: np.ndarray  # (N,) 0-based class indices
    masks: np.ndarray | None = None  # (N, H, W) bool, original size (instance segmentation)


@dataclass
class LabelMap:
    labels: np.ndarray  # (H, W) class indices, original size


class PredictionWriter(Protocol):
    def write(self, image: PredictedImage, prediction: Any) -> None: ...

    def close(self) -> dict[str, Any]:
        """Finish the files; what was written, for summary.json's ``outputs``."""
        ...


# -- the output folder ------------------------------------------------------------------------------
class OutputFolder:
    """Predictions are written into a hidden sibling folder and moved to ``target`` when complete, so an
    error leaves nothing behind and a new prediction replaces an old one whole. ``target`` must be new,
    empty, or an earlier prediction's folder (it holds summary.json): another folder is never replaced."""

    def __init__(self, target: Path):
        self.target = target
        self.partial: Path | None = None
        if target.is_file() or (target.is_dir() and any(target.iterdir()) and not (target / SUMMARY_FILE).is_file()):
            raise AistudioError(f"out={target}: exists and is not an earlier prediction (no {SUMMARY_FILE} in it) "
                                "— choose a new or empty folder")

    def open(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.target.parent / f".{self.target.name}.partial-{os.getpid()}"
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir()
        return self.partial

    def commit(self) -> Path:
        assert self.partial is not None, "open() first"
        old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
        if self.target.exists():
            os.replace(self.target, old)
        os.replace(self.partial, self.target)
        shutil.rmtree(old, ignore_errors=True)
        self.partial = None
        return self.target

    def discard(self) -> None:
        if self.partial is not None:
            shutil.rmtree(self.partial, ignore_errors=True)
            self.partial = None


class JsonArrayFile:
    """A JSON array written one element at a time (``head`` and ``tail`` wrap it: ``{"images": [`` ... ``]}``)."""

    def __init__(self, path: Path, head: str = "[", tail: str = "]"):
        self.path, self.tail, self.count = path, tail, 0
        self.handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.handle.write(head)

    def append(self, item: Any) -> None:
        self.handle.write(("," if self.count else "") + "\n" + json.dumps(item, separators=(", ", ": ")))
        self.count += 1

    def close(self) -> None:
        self.handle.write("\n" + self.tail + "\n")
        self.handle.close()


def write_image(path: Path, image: np.ndarray, quality: int = 90) -> None:
    """PNG or JPEG by suffix (any path: OpenCV's imwrite fails on some names, its encoder does not)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(path.suffix, image, params)
    if not ok:
        raise AistudioError(f"{path}: OpenCV could not encode this {image.dtype} image of shape {image.shape}")
    path.write_bytes(encoded.tobytes())


# -- classification ---------------------------------------------------------------------------------
class ClassificationWriter:
    """``predictions.csv``: file, label, score, then ``top<i>_label``/``top<i>_score`` for i = 1..k;
    ``predictions.json``: the same as a list of ``{file, label, score, topk: [{label, score}]}``."""

    def __init__(self, folder: Path, class_names: list[str], topk: int = 5):
        self.class_names = list(class_names)
        self.topk = max(0, min(int(topk), len(self.class_names)))
        self.csv_handle = open(folder / "predictions.csv", "w", encoding="utf-8", newline="")  # noqa: SIM115
        self.csv = csv.writer(self.csv_handle)
        self.csv.writerow(["file", "label", "score",
                           *(f"top{i}_{c}" for i in range(1, self.topk + 1) for c in ("label", "score"))])
        self.json = JsonArrayFile(folder / "predictions.json")

    def write(self, image: PredictedImage, prediction: ClassProbabilities) -> None:
        probabilities = np.asarray(prediction.probabilities, dtype=np.float64)
        order = np.argsort(-probabilities, kind="stable")
        best = int(order[0])
        top = [(self.class_names[int(k)], round(float(probabilities[k]), 6)) for k in order[:self.topk]]
        score = round(float(probabilities[best]), 6)
        self.csv.writerow([image.name, self.class_names[best], score, *(v for pair in top for v in pair)])
        self.json.append({"file": image.name, "label": self.class_names[best], "score": score,
                          "topk": [{"label": label, "score": s} for label, s in top]})

    def close(self) -> dict[str, Any]:
        self.csv_handle.close()
        self.json.close()
        return {"files": ["predictions.csv", "predictions.json"], "predictions": self.json.count}


# -- detection and instance segmentation ------------------------------------------------------------
def coco_categories(class_names: list[str]) -> list[dict[str, Any]]:
    """COCO categories: id = class index + 1 (torchvision's labels; 0 is the background)."""
    return [{"id": k + 1, "name": name, "supercategory": "none"} for k, name in enumerate(class_names)]


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a bool (H, W) mask, ``counts`` as str (JSON)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


class DetectionWriter:
    """COCO results ``predictions.json`` (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``; with
    masks ``segmentation`` as RLE) for detections scoring at least ``score_threshold``, and ``images.json``
    (``images``: id, file_name, width, height; ``categories``) that ``COCO()`` loads them against."""

    def __init__(self, folder: Path, class_names: list[str], score_threshold: float = 0.05, masks: bool = False):
        self.score_threshold = float(score_threshold)
        self.masks = masks
        self.results = JsonArrayFile(folder / "predictions.json")
        categories = json.dumps(coco_categories(class_names))
        self.images = JsonArrayFile(folder / "images.json", head=f'{{"categories": {categories}, "images": [',
                                    tail="]}")

    def write(self, image: PredictedImage, prediction: Detections) -> None:
        self.images.append({"id": image.image_id, "file_name": image.name, "width": image.width,
                            "height": image.height})
        for i in np.flatnonzero(np.asarray(prediction.scores) >= self.score_threshold):
            x1, y1, x2, y2 = (float(v) for v in prediction.boxes[i])
            result = {"image_id": image.image_id, "category_id": int(prediction.labels[i]) + 1,
                      "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                      "score": round(float(prediction.scores[i]), 5)}
            if self.masks and prediction.masks is not None:
                result["segmentation"] = encode_mask(prediction.masks[i])
            self.results.append(result)

    def close(self) -> dict[str, Any]:
        self.results.close()
        self.images.close()
        return {"files": ["predictions.json", "images.json"], "detections": self.results.count,
                "score_threshold": self.score_threshold}


# -- semantic segmentation --------------------------------------------------------------------------
class LabelMapWriter:
    """``masks/<stem>.png``: one label image per input, its original size; class indices (``values``
    None) or each class's pixel value from ``values`` (the project's ``mask_values``). 8-bit when every
    value fits, else 16-bit."""

    def __init__(self, folder: Path, class_names: list[str], values: list[int] | None = None):
        self.folder = folder
        top = max(values) if values else len(class_names) - 1
        self.dtype = np.uint8 if top <= 255 else np.uint16
        self.table = np.asarray(values if values else range(len(class_names)), dtype=self.dtype)
        self.count = 0

    def write(self, image: PredictedImage, prediction: LabelMap) -> None:
        write_image(self.folder / MASK_DIR / f"{image.stem}.png", self.table[np.asarray(prediction.labels)])
        self.count += 1

    def close(self) -> dict[str, Any]:
        return {"files": [f"{MASK_DIR}/"], "masks": self.count, "mask_dtype": np.dtype(self.dtype).name,
                "mask_values": [int(v) for v in self.table]}


# -- overlays ---------------------------------------------------------------------------------------
def class_colour(index: int) -> tuple[int, int, int]:
    """BGR colour of a class index (OpenCV's order)."""
    r, g, b = PALETTE[int(index) % len(PALETTE)]
    return b, g, r


def _text(canvas: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int]) -> None:
    """``text`` on a filled box of ``colour`` whose bottom-left is (x, y), kept inside the image."""
    import cv2

    scale = max(0.3, min(canvas.shape[:2]) / 700)
    thickness = 1 if scale < 0.8 else 2
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x = int(min(max(x, 0), max(canvas.shape[1] - w, 0)))
    y = int(min(max(y, h + base), canvas.shape[0]))
    cv2.rectangle(canvas, (x, y - h - base), (x + w, y), colour, -1)
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    cv2.putText(canvas, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, thickness, cv2.LINE_AA)


def _blend(canvas: np.ndarray, where: np.ndarray, colour: Any) -> None:
    canvas[where] = (canvas[where] * (1 - OVERLAY_ALPHA) + np.asarray(colour) * OVERLAY_ALPHA).astype(np.uint8)


def draw_overlay(image: np.ndarray, prediction: Any, class_names: list[str], threshold: float = 0.5) -> np.ndarray:
    """A BGR copy of ``image`` with ``prediction`` drawn: the label and score (classification), the boxes
    scoring at least ``threshold`` with label, score and mask (detection), a colour per class (label map)."""
    import cv2

    canvas = image.copy()
    if isinstance(prediction, ClassProbabilities):
        best = int(np.argmax(prediction.probabilities))
        _text(canvas, f"{class_names[best]} {float(prediction.probabilities[best]):.2f}", 0, 0, class_colour(best))
    elif isinstance(prediction, Detections):
        keep = np.flatnonzero(np.asarray(prediction.scores) >= threshold)
        thickness = max(1, round(min(canvas.shape[:2]) / 300))
        if prediction.masks is not None:
            for i in keep:
                _blend(canvas, prediction.masks[i], class_colour(prediction.labels[i]))
        for i in keep:
            colour = class_colour(prediction.labels[i])
            x1, y1, x2, y2 = (int(round(float(v))) for v in prediction.boxes[i])
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
            _text(canvas, f"{class_names[int(prediction.labels[i])]} {float(prediction.scores[i]):.2f}", x1, y1, colour)
    elif isinstance(prediction, LabelMap):
        colours = np.asarray([class_colour(k) for k in range(len(class_names))], dtype=np.float32)
        labels = np.asarray(prediction.labels)
        canvas = (canvas * (1 - OVERLAY_ALPHA) + colours[labels] * OVERLAY_ALPHA).astype(np.uint8)
    return canvas


class OverlayWriter:
    """``overlays/<stem>.jpg``: the original image (read again) with its prediction drawn."""

    def __init__(self, folder: Path, class_names: list[str], threshold: float = 0.5):
        self.folder, self.class_names, self.threshold = folder, list(class_names), float(threshold)
        self.count = 0
        self.unreadable = 0

    def write(self, image: PredictedImage, prediction: Any) -> None:
        import cv2

        from aistudio.data.images import ImageReadError, decode

        try:
            original = decode(image.file, cv2.IMREAD_COLOR)
        except ImageReadError:  # changed since it was predicted: the prediction stands, the overlay is left out
            self.unreadable += 1
            return
        drawn = draw_overlay(original, prediction, self.class_names, self.threshold)
        write_image(self.folder / OVERLAY_DIR / f"{image.stem}.jpg", drawn)
        self.count += 1

    def close(self) -> dict[str, Any]:
        return {"files": [f"{OVERLAY_DIR}/"], "overlays": self.count, "overlay_threshold": self.threshold,
                **({"overlays_unreadable": self.unreadable} if self.unreadable else {})}


# -- per task ---------------------------------------------------------------------------------------
PREDICTION_TASKS = ("classification", "detection", "instance_segmentation", "semantic_segmentation")


def make_writers(task: str, folder: Path, class_names: list[str], *, topk: int = 5, score_threshold: float = 0.05,
                 save_overlays: bool = False, overlay_threshold: float = 0.5,
                 mask_values: list[int] | None = None) -> list[PredictionWriter]:
    """The writers of ``task``'s outputs in ``folder`` (plus overlays)."""
    if task == "classification":
        writers: list[PredictionWriter] = [ClassificationWriter(folder, class_names, topk)]
    elif task in ("detection", "instance_segmentation"):
        writers = [DetectionWriter(folder, class_names, score_threshold, masks=task == "instance_segmentation")]
    elif task == "semantic_segmentation":
        writers = [LabelMapWriter(folder, class_names, mask_values)]
    else:
        raise AistudioError(f"task {task!r} has no prediction format — predict.py writes "
                            f"{', '.join(PREDICTION_TASKS)} predictions")
    if save_overlays:
        writers.append(OverlayWriter(folder, class_names, overlay_threshold))
    return writers
