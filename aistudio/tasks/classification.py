"""Image classification: cross-entropy (label smoothing, class weights) + accuracy/F1/precision/recall."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from aistudio.models.surgery import head_modules
from aistudio.tasks.base import MetricCollectionTask
from aistudio.tasks.class_report import classification_report
from aistudio.tasks.class_weights import ClassWeights
from aistudio.tasks.class_weights import class_weights as class_weights_for
from aistudio.tasks.classification_scores import ClassificationScores
from aistudio.tasks.examples import Example, classification_examples
from aistudio.tasks.export_spec import ExportSpec, batch_axes


class ClassificationModule(MetricCollectionTask):
    """Logs ``{train,val,test}_{loss,acc,f1,precision,recall}`` per epoch (F1/precision/recall macro)."""

    def __init__(self, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None,
                 class_names: list[str] | None = None, label_smoothing: float = 0.0,
                 class_weights: ClassWeights = None, freeze_backbone_epochs: int = 0,
                 backbone_lr_scale: float = 1.0, non_finite_loss: str = "fail", class_counts: list[int] | None = None,
                 non_finite_check_every: int | str = "auto"):
        super().__init__(model, optimizer, scheduler, class_names, freeze_backbone_epochs, backbone_lr_scale,
                         non_finite_loss, class_counts, non_finite_check_every)
        num_classes = int(model["num_classes"])
        weights = class_weights_for(class_weights, class_counts, num_classes)  # counts: images per class
        weight = torch.tensor(weights, dtype=torch.float32) if weights else None
        self.criterion = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=float(label_smoothing))
        # one confusion matrix per stage, no host sync per step (see classification_scores.py); labels
        # were validated when the dataset loaded, so the test confusion matrix skips its argument checks
        self.init_metrics(ClassificationScores(num_classes),
                          MulticlassConfusionMatrix(num_classes, validate_args=False))

    def class_report(self, confusion: torch.Tensor) -> dict[str, dict[str, Any]]:
        return classification_report(confusion, self.class_names or [str(i) for i in range(len(confusion))])

    def example_panels(self, batch: Any, mean: list[float] | None, std: list[float] | None) -> list[Example]:
        images, labels = batch
        return classification_examples(images, labels, self.model(images).softmax(dim=1), self.class_names, mean, std)

    def export_spec(self) -> ExportSpec:
        return ExportSpec(self.model.eval(), ["images"], ["logits"], batch_axes("images", "logits"), batched=True,
                          outputs={"logits": "(N, classes) scores before softmax, classes in the order of 'classes'"})

    def head_parameter_names(self) -> set[str]:
        heads = head_modules(self.model, int(self.hparams.model["num_classes"]))
        return {f"{h}.{p}" for h in heads for p, _ in self.model.get_submodule(h).named_parameters()}

    def step_outputs(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = batch
        logits = self.model(images)
        return self.criterion(logits, labels), logits.detach(), labels

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.model(images).softmax(dim=1)
