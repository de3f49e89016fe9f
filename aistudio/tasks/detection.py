"""Object detection and instance segmentation on torchvision detectors.

Training uses the model's own loss dict (each term logged); validation and test run predictions
through torchmetrics' MeanAveragePrecision (faster_coco_eval backend): ``{stage}_map``, ``_map_50``,
``_map_75``, ``_mar_100``, per class ``{stage}_ap_<class>`` (IoU 0.50:0.95) and ``{stage}_ap50_<class>``
(IoU 0.50), and for masks the same with ``segm_``.
There is no validation loss (torchvision detectors return predictions in eval mode), which is why
the monitored metric lives in the task config (``val_map``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision

from aistudio.tasks.base import TaskModule
from aistudio.tasks.examples import Example, detection_examples
from aistudio.tasks.export_spec import DetectorOutputs, ExportSpec
from aistudio.tasks.sharded_map import ShardedMeanAveragePrecision

logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # it prints the COCO table at INFO

# exactly pycocotools' Params: np.linspace(.5, .95, 10) and np.linspace(.0, 1.00, 101)
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10).tolist()
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101).tolist()


def _metric_name(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()


class DetectionModule(TaskModule):
    """``iou_types``: ``[bbox]`` for detection, ``[bbox, segm]`` for instance segmentation."""

    def __init__(self, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None,
                 class_names: list[str] | None = None, freeze_backbone_epochs: int = 0,
                 backbone_lr_scale: float = 1.0, iou_types: list[str] | tuple[str, ...] = ("bbox",),
                 mask_threshold: float = 0.5, non_finite_loss: str = "fail", class_counts: list[int] | None = None,
                 non_finite_check_every: int | str = "auto"):
        super().__init__(model, optimizer, scheduler, class_names, freeze_backbone_epochs, backbone_lr_scale,
                         non_finite_loss, class_counts, non_finite_check_every)
        self.iou_types = tuple(iou_types)
        self.mask_threshold = mask_threshold
        self.val_map, self.val_map50 = self._map(), self._map(iou_thresholds=[0.5])
        # the test metric at IoU .5 also keeps its precision/recall table: the per-class PR curves of plots/
        self.test_map, self.test_map50 = self._map(), self._map(iou_thresholds=[0.5], extended_summary=True)

    def _map(self, iou_thresholds: list[float] | None = None, extended_summary: bool = False) -> MeanAveragePrecision:
        # COCO's own thresholds in float64: torchmetrics' defaults are float32 (0.550000012, 0.699999988...),
        # which moves recall points that fall exactly on a threshold and makes mAP differ from COCOeval.
        # A second metric at IoU 0.5 alone gives per-class AP@0.5 (VOC-style), which COCO's summary lacks.
        return ShardedMeanAveragePrecision(box_format="xyxy", iou_type=self.iou_types, class_metrics=True,
                                           backend="faster_coco_eval",
                                           iou_thresholds=iou_thresholds or COCO_IOU_THRESHOLDS,
                                           rec_thresholds=COCO_RECALL_THRESHOLDS, extended_summary=extended_summary)

    def example_panels(self, batch: Any, mean: list[float] | None, std: list[float] | None) -> list[Example]:
        """Boxes only (masks are scored, not drawn); images are not normalised (the detector does that)."""
        images, targets = batch
        return detection_examples(images, targets, self.model(images), self.class_names)

    def export_spec(self) -> ExportSpec:
        """One image per call (torchvision detectors batch internally as a list); the detector resizes and
        normalises inside the graph. ONNX only: tracing a detector for TorchScript is not supported."""
        keys = ("boxes", "labels", "scores") + (("masks",) if "segm" in self.iou_types else ())
        per_detection = {key: {0: "detections"} for key in keys}
        outputs = {"boxes": "(D, 4) x1, y1, x2, y2 in the input image's pixels",
                   "labels": "(D,) class index + 1 (0 is the background)", "scores": "(D,) confidence"}
        if "masks" in keys:
            outputs["masks"] = "(D, 1, H, W) mask probabilities (threshold 0.5 as in evaluation)"
        return ExportSpec(DetectorOutputs(self.model, keys).eval(), ["image"], list(keys),
                          {"image": {1: "height", 2: "width"}, **per_detection}, batched=False, formats=("onnx",),
                          outputs=outputs)

    def head_parameter_names(self) -> set[str]:
        """Everything but the backbone (RPN, ROI/box/mask heads, FPN extras are trained from the start)."""
        return {n for n, _ in self.model.named_parameters() if not n.startswith("backbone.body.")
                and not n.startswith("backbone.features.")}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        images, targets = batch
        losses = self.model(images, targets)
        loss = sum(losses.values())
        size = len(images)
        self.log_loss("train", loss, size, parts=losses)
        return self.checked_loss(loss, batch_idx)

    def _predictions(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        predictions = self.model(images)
        if "segm" in self.iou_types:
            for prediction in predictions:  # (N, 1, H, W) probabilities -> (N, H, W) boolean masks
                prediction["masks"] = prediction["masks"].squeeze(1) > self.mask_threshold
        return predictions

    @staticmethod
    def _targets(targets: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        return [{**t, "masks": t["masks"].bool()} if "masks" in t else t for t in targets]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, targets = batch
        predictions, targets = self._predictions(images), self._targets(targets)
        self.val_map.update(predictions, targets)
        self.val_map50.update(predictions, targets)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        images, targets = batch
        predictions, targets = self._predictions(images), self._targets(targets)
        self.test_map.update(predictions, targets)
        self.test_map50.update(predictions, targets)

    def _per_class(self, result: dict[str, torch.Tensor], source: str, stage: str, name: str) -> dict[str, float]:
        """Log ``{stage}_{name}_<class>`` for the classes present; returns {class name: value}."""
        values = {}
        present = result["classes"].flatten().tolist()
        for value, label in zip(result[f"{source}map_per_class"].flatten().tolist(), present):
            if 1 <= label <= len(self.class_names):
                values[self.class_names[label - 1]] = float(value)
                self.log(f"{stage}_{name}_{_metric_name(self.class_names[label - 1])}", float(value))
        return values

    def _log_map(self, metric: MeanAveragePrecision, metric50: MeanAveragePrecision, stage: str) -> None:
        result, result50 = metric.compute(), metric50.compute()
        metric.reset()
        metric50.reset()
        several = len(self.iou_types) > 1  # torchmetrics then prefixes every key with the iou type
        per_class: dict[str, dict[str, float | None]] = {c: {} for c in self.class_names}
        for iou_type in self.iou_types:
            prefix = "segm_" if iou_type == "segm" else ""
            source = f"{iou_type}_" if several else ""
            for name in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10",
                         "mar_100"):
                self.log(f"{stage}_{prefix}{name}", result[f"{source}{name}"].float(), prog_bar=name == "map")
            for name, values in ((f"{prefix}ap", self._per_class(result, source, stage, f"{prefix}ap")),
                                 (f"{prefix}ap50", self._per_class(result50, source, stage, f"{prefix}ap50"))):
                for class_name in per_class:  # -1 / absent: no ground truth and no prediction of that class
                    value = values.get(class_name)
                    per_class[class_name][name] = value if value is not None and value >= 0 else None
        if stage == "test":
            self.test_report = {"per_class": per_class, "recall_thresholds": COCO_RECALL_THRESHOLDS,
                                "pr_curves": {t: self._pr_curves(result50, f"{t}_" if several else "")
                                              for t in self.iou_types}}

    def _pr_curves(self, result: dict[str, torch.Tensor], source: str) -> dict[str, list[float]]:
        """Per class, precision at each of COCO's 101 recall thresholds at IoU .5 (all areas, 100 detections;
        -1 where the class has no ground truth)."""
        precision = result.get(f"{source}precision")
        if precision is None or precision.ndim != 5:
            return {}
        curves = {}
        for k, label in enumerate(result["classes"].flatten().tolist()):
            if 1 <= label <= len(self.class_names) and k < precision.shape[2]:
                curves[self.class_names[label - 1]] = precision[0, :, k, 0, -1].tolist()
        return curves

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_map(self.val_map, self.val_map50, "val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_map(self.test_map, self.test_map50, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        images = batch[0] if isinstance(batch, (tuple, list)) and isinstance(batch[0], list) else batch
        return self._predictions(images)
