"""Image classification: cross-entropy (label smoothing, class weights) + accuracy/F1/precision/recall."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from aistudio.models.classification import head_modules
from aistudio.tasks.base import TaskModule


class ClassificationModule(TaskModule):
    """Logs ``{train,val,test}_{loss,acc,f1,precision,recall}`` per epoch (F1/precision/recall macro)."""

    def __init__(self, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None,
                 class_names: list[str] | None = None, label_smoothing: float = 0.0,
                 class_weights: list[float] | None = None, freeze_backbone_epochs: int = 0,
                 backbone_lr_scale: float = 1.0):
        super().__init__(model, optimizer, scheduler, class_names, freeze_backbone_epochs, backbone_lr_scale)
        num_classes = int(model["num_classes"])
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.criterion = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=float(label_smoothing))
        # labels were validated when the dataset loaded; torchmetrics' per-batch argument checks would
        # add a GPU sync to every step
        checks = {"validate_args": False}
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes, average="micro", **checks),
            "f1": MulticlassF1Score(num_classes, average="macro", **checks),
            "precision": MulticlassPrecision(num_classes, average="macro", **checks),
            "recall": MulticlassRecall(num_classes, average="macro", **checks),
        })
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def head_parameter_names(self) -> set[str]:
        heads = head_modules(self.model, int(self.hparams.model["num_classes"]))
        return {f"{h}.{p}" for h in heads for p, _ in self.model.get_submodule(h).named_parameters()}

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str,
                     metrics: MetricCollection) -> torch.Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = self.criterion(logits, labels)
        metrics.update(logits.detach(), labels)
        # metrics are updated per batch and logged once per epoch (below): logging Metric objects every
        # step costs Lightning about a millisecond per metric per step
        self.log(f"{stage}_loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True,
                 batch_size=len(labels))
        return loss

    def _log_epoch_metrics(self, metrics: MetricCollection) -> None:
        self.log_dict(metrics.compute(), on_step=False, on_epoch=True, prog_bar=metrics is not self.train_metrics)
        metrics.reset()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train", self.train_metrics)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # at the last batch, not in on_train_epoch_end: callbacks' epoch-end hooks run before the
        # module's, and the run directory's metrics.json entry must include the train metrics
        if self.trainer.is_last_batch:
            self._log_epoch_metrics(self.train_metrics)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics(self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics(self.test_metrics)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.model(images).softmax(dim=1)
