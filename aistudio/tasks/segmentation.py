"""Semantic segmentation: per-pixel cross-entropy (+ auxiliary head, + optional soft Dice) and mIoU/Dice/accuracy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)

from aistudio import AistudioError
from aistudio.tasks.base import MetricCollectionTask
from aistudio.tasks.class_report import segmentation_report
from aistudio.tasks.class_weights import ClassWeights
from aistudio.tasks.class_weights import class_weights as class_weights_for
from aistudio.tasks.examples import Example, segmentation_examples
from aistudio.tasks.export_spec import ExportSpec, SemanticLogits, batch_axes

HEADS = ("classifier", "aux_classifier")  # torchvision's segmentation heads; the rest is the backbone


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, eps: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of the soft Dice of softmax(logits) vs one-hot target; ignored pixels excluded.

    Counterweights cross-entropy's bias to large classes (background) on imbalanced masks.
    """
    num_classes = logits.shape[1]
    valid = target != ignore_index
    probs = logits.softmax(dim=1) * valid.unsqueeze(1)
    onehot = F.one_hot(target.where(valid, 0), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    onehot = onehot * valid.unsqueeze(1)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2.0 * intersection + eps) / (total + eps)).mean()


class SemanticSegmentationModule(MetricCollectionTask):
    """Logs ``{train,val,test}_{loss,miou,dice,pixel_acc}`` per epoch (mIoU and Dice are class macro means,
    over the classes present in prediction or target; ``ignore_index`` pixels count nowhere)."""

    def __init__(self, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None,
                 class_names: list[str] | None = None, ignore_index: int = 255, dice_weight: float = 0.0,
                 aux_weight: float = 0.5, label_smoothing: float = 0.0, class_weights: ClassWeights = None,
                 freeze_backbone_epochs: int = 0, backbone_lr_scale: float = 1.0, non_finite_loss: str = "fail",
                 class_counts: list[int] | None = None,
                 non_finite_check_every: int | str = "auto"):
        super().__init__(model, optimizer, scheduler, class_names, freeze_backbone_epochs, backbone_lr_scale,
                         non_finite_loss, class_counts, non_finite_check_every)
        num_classes = int(model["num_classes"])
        # the project's counts are per image label, which mask projects do not have: no `balanced` here
        weights = class_weights_for(class_weights, None, num_classes)
        weight = torch.tensor(weights, dtype=torch.float32) if weights else None
        self.ignore_index = int(ignore_index)
        self.dice_weight = float(dice_weight)
        self.aux_weight = float(aux_weight)
        self.criterion = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=self.ignore_index,
                                                   label_smoothing=float(label_smoothing))
        # masks were validated when read; torchmetrics' per-batch argument checks would add a GPU sync per step
        checks = {"validate_args": False, "ignore_index": self.ignore_index}
        metrics = MetricCollection({
            "miou": MulticlassJaccardIndex(num_classes, average="macro", **checks),
            "dice": MulticlassF1Score(num_classes, average="macro", **checks),
            "pixel_acc": MulticlassAccuracy(num_classes, average="micro", **checks),
        })
        self.init_metrics(metrics, MulticlassConfusionMatrix(num_classes, **checks))

    def class_report(self, confusion: torch.Tensor) -> dict[str, dict[str, Any]]:
        return segmentation_report(confusion, self.class_names or [str(i) for i in range(len(confusion))])

    def setup(self, stage: str) -> None:
        """The dataset writes the project's ignore value into masks; the loss must skip the same value."""
        project = getattr(getattr(self.trainer, "datamodule", None), "project", None)
        if project is not None and project.ignore_index != self.ignore_index:
            raise AistudioError(f"dataset {project.root} marks ignored pixels with {project.ignore_index} but "
                                f"task.module.ignore_index={self.ignore_index} — set "
                                f"task.module.ignore_index={project.ignore_index}")

    def example_panels(self, batch: Any, mean: list[float] | None, std: list[float] | None) -> list[Example]:
        images, masks = batch
        predicted = self.model(images)["out"].argmax(dim=1)
        return segmentation_examples(images, masks, predicted, int(self.hparams.model["num_classes"]),
                                     self.ignore_index, mean, std)

    def export_spec(self) -> ExportSpec:
        return ExportSpec(SemanticLogits(self.model).eval(), ["images"], ["logits"], batch_axes("images", "logits"),
                          batched=True, outputs={"logits": "(N, classes, H, W) per-pixel scores before softmax; "
                                                           "argmax over axis 1 is the label map"})

    def head_parameter_names(self) -> set[str]:
        return {f"{head}.{p}" for head in HEADS if getattr(self.model, head, None) is not None
                for p, _ in self.model.get_submodule(head).named_parameters()}

    def loss(self, outputs: dict[str, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        loss = self.criterion(outputs["out"], masks)
        if "aux" in outputs and self.aux_weight:
            loss = loss + self.aux_weight * self.criterion(outputs["aux"], masks)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(outputs["out"], masks, self.ignore_index)
        return loss

    def step_outputs(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, masks = batch
        outputs = self.model(images)
        return self.loss(outputs, masks), outputs["out"].detach().argmax(dim=1), masks

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Per-pixel class probabilities (N, K, H, W); ``.argmax(1)`` gives the label map."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.model(images)["out"].softmax(dim=1)
