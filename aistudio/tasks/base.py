"""What every task shares: the model built from config, optimizer/scheduler, fine-tuning, checkpoints.

The module is built from plain config dicts (``model``, ``optimizer``, ``scheduler``) and saves
them as hyper-parameters, so ``Module.load_from_checkpoint(path)`` rebuilds it in a fresh process.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from torchmetrics import Metric, MetricCollection

from aistudio import AistudioError
from aistudio.tasks.epoch_losses import EpochLosses
from aistudio.tasks.examples import Example
from aistudio.tasks.export_spec import ExportSpec
from aistudio.tasks.metric_state import metric_state, restore_metric_state
from aistudio.training.schedulers import build_scheduler

log = logging.getLogger(__name__)

NON_FINITE_POLICIES = ("fail", "skip")
DEFERRED_CHECK_STEPS = 50  # fail policy on a GPU: steps between reads of the on-device non-finite flag
MAX_SKIPPED_IN_A_ROW = 20  # a run that only produces NaN has diverged: skipping forever would hide it


class NonFiniteLossError(AistudioError):
    """The training loss became NaN/inf (names the step and batch)."""


class TaskModule(pl.LightningModule):
    """Base LightningModule. Subclasses add the loss, metrics and the train/val/test steps."""

    def __init__(self, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None,
                 class_names: list[str] | None = None, freeze_backbone_epochs: int = 0,
                 backbone_lr_scale: float = 1.0, non_finite_loss: str = "fail", class_counts: list[int] | None = None,
                 non_finite_check_every: int | str = "auto"):
        super().__init__()
        if non_finite_loss not in NON_FINITE_POLICIES:
            raise AistudioError(f"task.module.non_finite_loss={non_finite_loss!r}: use one of {', '.join(NON_FINITE_POLICIES)}")
        if non_finite_check_every != "auto" and (isinstance(non_finite_check_every, bool)
                                                 or not str(non_finite_check_every).isdigit()
                                                 or int(non_finite_check_every) < 1):
            raise AistudioError(f"task.module.non_finite_check_every={non_finite_check_every!r}: use auto or a "
                                "number of steps (1: every step)")
        self.save_hyperparameters()
        self.class_names = list(class_names or [])
        self.class_counts = list(class_counts) if class_counts else None  # train split, per class
        self.model = instantiate(model)
        self._backbone_frozen = False
        self._skipped_in_a_row = 0
        # fail policy checked every N steps: the losses since the last check stay on the device (one slot a
        # step, written by a device copy), their (step, epoch, batch) on the host
        self._unchecked_losses: torch.Tensor | None = None
        self._unchecked_steps: list[tuple[int, int, int]] = []
        # per-class figures of the last test run ({"per_class": {class: {...}}, ...}): eval.py writes them
        self.test_report: dict[str, Any] = {}
        self.epoch_losses = EpochLosses()

    def forward(self, images: torch.Tensor) -> Any:
        return self.model(images)

    def example_panels(self, batch: Any, mean: list[float] | None, std: list[float] | None) -> list[Example]:
        """Pictures of the model's predictions against the ground truth on one batch, for plots/ and
        TensorBoard (tasks override; ``mean``/``std``: the normalisation to undo)."""
        return []

    def export_spec(self) -> ExportSpec:
        """The network as export.py traces it (tasks override)."""
        raise AistudioError(f"{type(self).__name__} does not define an export (export_spec)")

    # -- fine-tuning: which parameters are the backbone ------------------------------------------
    def head_parameter_names(self) -> set[str]:
        """Parameter names of the task head (everything else is the backbone). Tasks override."""
        return set()

    def _split_parameters(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        head_names = {f"model.{n}" for n in self.head_parameter_names()}
        backbone, head = [], []
        for name, parameter in self.named_parameters():
            (head if name in head_names else backbone).append(parameter)
        return backbone, head

    def on_train_epoch_start(self) -> None:
        epochs = int(self.hparams.freeze_backbone_epochs or 0)
        frozen = self.current_epoch < epochs
        if frozen != self._backbone_frozen:
            backbone, _ = self._split_parameters()
            for parameter in backbone:
                parameter.requires_grad_(not frozen)
            self._backbone_frozen = frozen
            self.train(self.training)  # re-apply the BatchNorm policy below
            log.info("epoch %d: backbone %s", self.current_epoch, "frozen" if frozen else "trainable")

    def train(self, mode: bool = True) -> TaskModule:
        """While the backbone is frozen its BatchNorm statistics are frozen too."""
        super().train(mode)
        if mode and self._backbone_frozen:
            head = {n.rsplit(".", 1)[0] for n in self.head_parameter_names()}
            for name, module in self.model.named_modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and name not in head:
                    module.eval()
        return self

    def log_loss(self, stage: str, loss: torch.Tensor, batch_size: int,
                 parts: dict[str, torch.Tensor] | None = None) -> None:
        """``<stage>_loss`` (and ``<stage>_<part>`` for each of ``parts``): epoch means, weighted by batch
        size, summed on the device and logged once when the epoch ends (:class:`EpochLosses`: exact over DDP
        processes); in training also ``train_loss_step``, this process's value, on the steps the logger
        writes (``trainer.log_every_n_steps``; the progress bar shows it from there)."""
        if stage == "train" and self._logger_writes_this_step():
            self.log("train_loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
        self.epoch_losses.add(stage, {"loss": loss, **(parts or {})}, batch_size)

    def _logger_writes_this_step(self) -> bool:
        """Whether Lightning writes this step's values to the logger. A ``self.log`` costs ~1 ms of host
        time, so the step loss is logged only then; without the (private) flag, on every step."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def log_epoch_losses(self, stage: str) -> None:
        """Log the epoch means of ``stage``'s losses (see :meth:`log_loss`); nothing when none were added."""
        if not self.epoch_losses.pending(stage):
            return
        reduce_sum = ((lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")) if self._trainer is not None
                      and self.trainer.world_size > 1 else None)
        for name, mean in self.epoch_losses.pop(stage, reduce_sum).items():
            # sync_dist on a value every process already shares: no change, and no DDP warning
            self.log(f"{stage}_{name}", mean, on_step=False, on_epoch=True, batch_size=1, sync_dist=True,
                     prog_bar=stage != "train" and name == "loss")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """The epoch's train losses at its last batch: callbacks' epoch-end hooks (the run directory's
        metrics.json writer) run before the module's."""
        if self.trainer.is_last_batch:
            self.log_epoch_losses("train")

    def on_train_epoch_end(self) -> None:
        self.log_epoch_losses("train")  # an epoch cut short (max_steps, a stop) has no last batch

    def on_validation_epoch_start(self) -> None:
        self.epoch_losses.reset("val")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_losses("val")

    def on_test_epoch_start(self) -> None:
        self.epoch_losses.reset("test")

    def on_test_epoch_end(self) -> None:
        self.log_epoch_losses("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written within an epoch (a stop) keeps the epoch's loss sums for the resumed epoch."""
        checkpoint["epoch_train_losses"] = self.epoch_losses.state_dict("train")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.epoch_losses.load_state_dict("train", checkpoint.get("epoch_train_losses") or {}, self.device)

    # -- non-finite loss ----------------------------------------------------------------------------
    def non_finite_interval(self, device: torch.device) -> int:
        """Steps between reads of the non-finite flag: with ``fail`` on a GPU, ``auto`` reads it every
        :data:`DEFERRED_CHECK_STEPS` steps, so no step waits for the device; on a CPU (nothing to wait
        for) and with ``skip`` (which must decide before the backward pass, as AMP's GradScaler does) every step."""
        every = self.hparams.get("non_finite_check_every", "auto")
        if self.hparams.non_finite_loss == "skip":
            return 1
        if every == "auto":
            return 1 if device.type == "cpu" else DEFERRED_CHECK_STEPS
        return int(every)

    def checked_loss(self, loss: torch.Tensor, batch_idx: int) -> torch.Tensor | None:
        """``loss``, or per ``non_finite_loss``: stop the run naming step and batch (``fail``), or skip
        the batch — no backward, no optimizer step — by returning None (``skip``). With ``fail`` checked
        every N > 1 steps, the first non-finite loss is recorded on the device and the run stops at the
        next check, naming the step where it happened (the steps between trained on a NaN; the run is
        failed either way, and no checkpoint is written between checks inside an epoch)."""
        every = self.non_finite_interval(loss.device)
        if every > 1:
            self._record_non_finite(loss.detach(), batch_idx)
            if (batch_idx + 1) % every == 0 or self.trainer.is_last_batch:
                self._raise_recorded_non_finite()
            return loss
        if bool(torch.isfinite(loss)):
            self._skipped_in_a_row = 0
            return loss
        where = (f"loss is {float(loss)} at step {self.global_step} (epoch {self.current_epoch}, batch "
                 f"{batch_idx})")
        lr = (self.hparams.optimizer or {}).get("lr")
        if self.hparams.non_finite_loss == "skip" and self._skipped_in_a_row < MAX_SKIPPED_IN_A_ROW:
            self._skipped_in_a_row += 1
            log.warning("%s: batch skipped (task.module.non_finite_loss=skip)", where)
            return None
        advice = (f"{MAX_SKIPPED_IN_A_ROW} batches in a row were skipped; " if self._skipped_in_a_row else "")
        raise NonFiniteLossError(f"{where} — {advice}lower optimizer.lr (now {lr}), set trainer.gradient_clip_val, "
                                 "check the data, or skip such batches with task.module.non_finite_loss=skip")

    def _record_non_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Keep this step's loss in a device buffer for the next check: a device-to-device copy, no host
        sync and no host-to-device copy (a pageable one can wait for the stream)."""
        every = self.non_finite_interval(loss.device)
        buffer = self._unchecked_losses
        if buffer is None or buffer.device != loss.device or len(buffer) < every:
            buffer = self._unchecked_losses = torch.zeros(every, dtype=torch.float32, device=loss.device)
            self._unchecked_steps = []
        if len(self._unchecked_steps) >= len(buffer):  # never more than N between checks; keep the first
            return
        buffer[len(self._unchecked_steps)].copy_(loss)
        self._unchecked_steps.append((self.global_step, self.current_epoch, batch_idx))

    def _raise_recorded_non_finite(self) -> None:
        steps, self._unchecked_steps = self._unchecked_steps, []
        if not steps or self._unchecked_losses is None:
            return
        values = self._unchecked_losses[:len(steps)].tolist()  # the one host read every N steps
        first = next(((where, value) for where, value in zip(steps, values) if not math.isfinite(value)), None)
        if first is None:
            return
        (step, epoch, batch), value = first
        lr = (self.hparams.optimizer or {}).get("lr")
        raise NonFiniteLossError(f"loss is {value} at step {step} (epoch {epoch}, batch {batch}; seen "
                                 f"at step {self.global_step}, checked every {self.non_finite_interval(self.device)}) "
                                 f"— lower optimizer.lr (now {lr}), set trainer.gradient_clip_val, check the data, or "
                                 "skip such batches with task.module.non_finite_loss=skip")

    # -- optimisation --------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        factory = instantiate(self.hparams.optimizer)
        base_lr = float(factory.keywords.get("lr", 1e-3)) if hasattr(factory, "keywords") else 1e-3
        backbone, head = self._split_parameters()
        scale = float(self.hparams.backbone_lr_scale)
        if not head and (scale != 1.0 or self.hparams.freeze_backbone_epochs):
            raise AistudioError("backbone_lr_scale / freeze_backbone_epochs need a task head, and none was "
                                "found in this model — leave them at 1.0 / 0")
        groups = [{"params": backbone, "lr": base_lr * scale, "name": "backbone"}]
        if head:
            groups.append({"params": head, "lr": base_lr, "name": "head"})
        optimizer = factory(groups)
        scheduler_cfg = self.hparams.scheduler or {}
        if not scheduler_cfg.get("scheduler"):
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        max_epochs = max(1, int(self.trainer.max_epochs or 1))
        runtime = {
            "total_steps": total_steps,
            "steps_per_epoch": max(1, total_steps // max_epochs),
            "max_epochs": max_epochs,
            "max_lr": [group["lr"] for group in optimizer.param_groups],
        }
        scheduler = build_scheduler(instantiate(scheduler_cfg["scheduler"]), optimizer, runtime)
        config = {"scheduler": scheduler, "interval": scheduler_cfg.get("interval", "epoch"),
                  "frequency": int(scheduler_cfg.get("frequency", 1))}
        if scheduler_cfg.get("monitor"):
            config["monitor"] = scheduler_cfg["monitor"]
        return {"optimizer": optimizer, "lr_scheduler": config}


class MetricCollectionTask(TaskModule):
    """A task scored by one torchmetrics MetricCollection per stage (classification, segmentation), or a
    metric that acts as one (``clone(prefix=)``, ``compute()`` -> dict: classification's ClassificationScores).

    Metrics are updated every batch and computed + logged once per epoch, like the losses: logging Metric
    objects every step costs Lightning about a millisecond per metric per step. Train metrics are logged at the last
    batch, not in ``on_train_epoch_end``, because callbacks' epoch-end hooks (the run directory's
    metrics.json writer) run before the module's.
    """

    def init_metrics(self, metrics: MetricCollection | Metric, confusion: Metric | None = None) -> None:
        """``confusion``: a confusion-matrix metric accumulated in the test stage only; its per-class
        figures (:meth:`class_report`) become ``test_report`` (what eval.py writes and the plots draw)."""
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")
        self.test_confusion = confusion

    def class_report(self, confusion: torch.Tensor) -> dict[str, dict[str, Any]]:
        """Per-class figures from the test confusion matrix. Tasks with a confusion metric override."""
        return {}

    def step_outputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, predictions for the metrics, targets) of one batch."""
        raise NotImplementedError

    def _shared_step(self, batch: Any, stage: str, metrics: MetricCollection) -> torch.Tensor:
        loss, predictions, targets = self.step_outputs(batch)
        metrics.update(predictions, targets)
        if stage == "test" and self.test_confusion is not None:
            self.test_confusion.update(predictions, targets)
        self.log_loss(stage, loss, len(targets))
        return loss

    def _log_epoch_metrics(self, metrics: MetricCollection) -> None:
        self.log_dict(metrics.compute(), on_step=False, on_epoch=True, prog_bar=metrics is not self.train_metrics)
        metrics.reset()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        return self.checked_loss(self._shared_step(batch, "train", self.train_metrics), batch_idx)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self.trainer.is_last_batch:
            self._log_epoch_metrics(self.train_metrics)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_epoch_metrics(self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test", self.test_metrics)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written within an epoch also keeps the train metrics' counts for the resumed epoch."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["epoch_train_metrics"] = metric_state(self.train_metrics)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        restore_metric_state(self.train_metrics, checkpoint.get("epoch_train_metrics"), self.device)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_epoch_metrics(self.test_metrics)
        if self.test_confusion is not None:
            matrix = self.test_confusion.compute()
            self.test_confusion.reset()
            self.test_report = {"per_class": self.class_report(matrix),
                                "confusion_matrix": matrix.long().cpu().tolist()}
