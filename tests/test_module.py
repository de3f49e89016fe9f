"""The LightningModule and model builders in-process: fine-tuning options, weights policy, metrics."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from aistudio import AistudioError, user_error
from aistudio.data.classification import ClassificationDataset
from aistudio.data.datamodule import ProjectDataModule
from aistudio.models.classification import build_classifier
from aistudio.models.surgery import head_modules
from aistudio.tasks.classification import ClassificationModule

MODEL = {"_target_": "aistudio.models.classification.build_classifier", "name": "resnet18", "num_classes": 3}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9}


def datamodule(project) -> ProjectDataModule:
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    pipeline = A.Compose([A.Resize(32, 32), A.Normalize(), ToTensorV2()])
    return ProjectDataModule(project, dataset=ClassificationDataset, batch_size=8, num_workers=0,
                             train_transform=pipeline, eval_transform=pipeline)


def trainer(epochs: int, callbacks=()) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))


@pytest.mark.parametrize(("name", "head"), [("resnet18", ["fc"]), ("mobilenet_v3_small", ["classifier.3"]),
                                            ("efficientnet_b0", ["classifier.1"]), ("convnext_tiny", ["classifier.2"]),
                                            ("vit_b_16", ["heads.head"])])
def test_head_is_found_for_every_family(name, head):
    kwargs = {"image_size": 32} if name == "vit_b_16" else {}
    assert head_modules(build_classifier(name, 7, **kwargs), 7) == head


@pytest.mark.parametrize(("name", "classes", "head"), [("efficientnet_b0", 10, ["classifier.1"]),
                                                       ("mobilenet_v3_small", 8, ["classifier.3"])])
def test_squeeze_excitation_gates_with_as_many_channels_as_classes_are_not_the_head(name, classes, head):
    """efficientnet_b0's SE blocks have 10-channel 1x1 convs: with 10 classes they looked like heads (and
    stayed trainable while the backbone was frozen)."""
    assert head_modules(build_classifier(name, classes), classes) == head


def test_frozen_backbone_trains_only_the_head_then_unfreezes(color_project):
    torch.manual_seed(0)
    module = ClassificationModule(MODEL, SGD, class_names=["r", "g", "b"], freeze_backbone_epochs=1)
    snapshots = []

    class Snapshot(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    start = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    trainer(2, [Snapshot()]).fit(module, datamodule=datamodule(color_project))
    after_frozen, after_free = snapshots
    assert torch.equal(after_frozen["conv1.weight"], start["conv1.weight"])
    assert torch.equal(after_frozen["bn1.running_mean"], start["bn1.running_mean"])  # BN statistics frozen too
    assert not torch.equal(after_frozen["fc.weight"], start["fc.weight"])
    assert not torch.equal(after_free["conv1.weight"], after_frozen["conv1.weight"])


def test_backbone_gets_its_own_learning_rate(color_project):
    module = ClassificationModule(MODEL, SGD, backbone_lr_scale=0.1)
    lrs = {}

    class Capture(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            lrs.update({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})

    trainer(1, [Capture()]).fit(module, datamodule=datamodule(color_project))
    assert lrs == {"backbone": pytest.approx(0.005), "head": pytest.approx(0.05)}


def test_cosine_schedule_is_stepped_per_batch(color_project):
    scheduler = {"scheduler": {"_target_": "aistudio.training.schedulers.warmup_cosine", "_partial_": True,
                               "warmup_epochs": 1}, "interval": "step"}
    module = ClassificationModule(MODEL, SGD, scheduler=scheduler)
    seen = []

    class Capture(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[1]["lr"])

    trainer(2, [Capture()]).fit(module, datamodule=datamodule(color_project))
    assert len(seen) == 6 and seen[0] < seen[2] and seen[3] == pytest.approx(0.05) and seen[-1] < 0.05


def test_class_weights_are_derived_by_the_task_from_the_train_counts():
    from aistudio.tasks.class_weights import class_weights

    assert class_weights("balanced", [10, 30], 2) == pytest.approx([2.0, 2 / 3])
    assert class_weights(None, [1, 2], 2) is None and class_weights([1, 2], [5, 5], 2) == [1.0, 2.0]
    with pytest.raises(AistudioError, match="2 values for 3 classes"):
        class_weights([1, 2], [1, 1, 1], 3)
    balanced = ClassificationModule(MODEL, SGD, class_weights="balanced", class_counts=[10, 30, 20])
    assert balanced.criterion.weight.tolist() == pytest.approx([2.0, 2 / 3, 1.0])
    assert balanced.hparams.class_counts == [10, 30, 20]  # saved: the checkpoint rebuilds the same loss
    with pytest.raises(AistudioError, match="needs per-class counts"):
        ClassificationModule(MODEL, SGD, class_weights="balanced")
    module = ClassificationModule(MODEL, SGD, class_weights=[1.0, 2.0, 3.0], label_smoothing=0.1)
    assert module.criterion.weight.tolist() == [1.0, 2.0, 3.0] and module.criterion.label_smoothing == 0.1


def test_local_weights_file_loads_backbone_and_skips_new_head(tmp_path):
    source = build_classifier("resnet18", 10)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = build_classifier("resnet18", 3, weights=str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight) and model.fc.out_features == 3


def test_weights_from_an_aistudio_checkpoint(tmp_path):
    module = ClassificationModule(MODEL, SGD)
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    model = build_classifier("resnet18", 3, weights=str(path))
    assert torch.equal(model.fc.weight, module.model.fc.weight)


def test_torchvision_weights_not_in_cache_fail_with_the_file_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(AistudioError, match=r"resnet18-.*\.pth.*cannot be downloaded here"):
        build_classifier("resnet18", 3, weights="DEFAULT")
    with pytest.raises(AistudioError, match="IMAGENET1K_V1"):
        build_classifier("resnet18", 3, weights="NOT_A_WEIGHT")


def test_cached_torchvision_weights_replace_the_head(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights, resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    reference = resnet18()  # stands in for the ImageNet file: same layout, 1000 classes
    torch.save(reference.state_dict(), cache / ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[1])
    model = build_classifier("resnet18", 5, weights="DEFAULT")
    assert torch.equal(model.conv1.weight, reference.conv1.weight) and model.fc.out_features == 5


def test_grayscale_input_channels():
    model = build_classifier("resnet18", 4, in_channels=1)
    assert model.conv1.in_channels == 1 and model(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_num_classes_must_be_known():
    with pytest.raises(AistudioError, match="num_classes"):
        build_classifier("resnet18", None)


def test_metrics_cover_train_val_test(color_project):
    module = ClassificationModule(MODEL, SGD)
    fit = trainer(1)
    fit.fit(module, datamodule=datamodule(color_project))
    assert {"train_acc", "train_f1", "val_acc", "val_f1", "val_precision", "val_recall", "val_loss"} <= set(
        fit.callback_metrics)
    results = fit.test(module, datamodule=datamodule(color_project), verbose=False)[0]
    assert set(results) == {"test_loss", "test_acc", "test_f1", "test_precision", "test_recall"}
    assert user_error(None) is None


class StepLosses(pl.Callback):
    """Every training step's loss and batch size, as the module returned them."""

    def __init__(self):
        self.steps: list[tuple[int, float, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append((trainer.global_step - 1, float(outputs["loss"]), len(batch[1])))


def test_epoch_losses_are_batch_weighted_means_and_the_step_loss_is_logged_when_the_logger_writes(color_project,
                                                                                                  tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    data = datamodule(color_project)
    data.batch_size = 5  # 24 training images: batches of 5, 5, 5, 5, 4
    recorder = StepLosses()
    fit = pl.Trainer(max_epochs=2, accelerator="cpu", logger=CSVLogger(tmp_path, name="csv"), log_every_n_steps=2,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=[recorder])
    fit.fit(ClassificationModule(MODEL, SGD), datamodule=data)
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    logged_steps = {int(r["step"]): float(r["train_loss_step"]) for r in rows if r.get("train_loss_step")}
    assert sorted(logged_steps) == [s for s, _, _ in recorder.steps if (s + 1) % 2 == 0]  # steps 1, 3, 5, ...
    for step, loss, _ in recorder.steps:
        if step in logged_steps:
            assert logged_steps[step] == pytest.approx(loss, rel=1e-6)
    epoch_means = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    per_epoch = [recorder.steps[:5], recorder.steps[5:]]
    assert [len(e) for e in per_epoch] == [5, 5] and [n for _, _, n in per_epoch[0]] == [5, 5, 5, 5, 4]
    expected = [sum(loss * n for _, loss, n in e) / sum(n for _, _, n in e) for e in per_epoch]
    assert epoch_means == pytest.approx(expected, rel=1e-6)


def test_epoch_loss_sums_survive_a_checkpoint_within_the_epoch():
    from aistudio.tasks.epoch_losses import EpochLosses

    values = [(torch.tensor(0.5), 8), (torch.tensor(1.5), 8), (torch.tensor(4.0), 3)]
    whole = EpochLosses()
    for value, n in values:
        whole.add("train", {"loss": value, "part": value * 2}, n)
    first = EpochLosses()
    for value, n in values[:2]:
        first.add("train", {"loss": value, "part": value * 2}, n)
    resumed = EpochLosses()
    resumed.load_state_dict("train", first.state_dict("train"), torch.device("cpu"))
    resumed.add("train", {"loss": values[2][0], "part": values[2][0] * 2}, values[2][1])
    expected = (0.5 * 8 + 1.5 * 8 + 4.0 * 3) / 19
    means = resumed.pop("train")
    assert float(means["loss"]) == pytest.approx(expected) and float(means["part"]) == pytest.approx(2 * expected)
    assert {k: float(v) for k, v in whole.pop("train").items()} == pytest.approx({k: float(v) for k, v in means.items()})
    assert not resumed.pending("train") and resumed.pop("train") == {}


def test_train_metric_state_round_trips_and_stays_out_of_the_weights():
    """What a checkpoint written within an epoch keeps of the train metrics (a MetricCollection here, as
    segmentation's): restored into fresh metrics, the epoch's value is the uninterrupted one."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    from aistudio.tasks.metric_state import metric_state, restore_metric_state

    def fresh() -> MetricCollection:
        return MetricCollection({"miou": MulticlassJaccardIndex(3), "acc": MulticlassAccuracy(3)}, prefix="train_")

    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 5, 5, generator=generator), torch.randint(0, 3, (4, 5, 5), generator=generator))
               for _ in range(4)]
    whole, stopped = fresh(), fresh()
    for i, (scores, target) in enumerate(batches):
        whole.update(scores, target)
        if i < 2:
            stopped.update(scores, target)
    saved = metric_state(stopped)
    assert stopped.state_dict() == {} and saved["states"]  # marked persistent only while saving
    resumed = fresh()
    restore_metric_state(resumed, saved, torch.device("cpu"))
    for scores, target in batches[2:]:
        resumed.update(scores, target)
    assert resumed.state_dict() == {}
    expected, got = whole.compute(), resumed.compute()
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
    restore_metric_state(resumed, {"states": {}, "updates": []}, torch.device("cpu"))  # an epoch-end checkpoint
