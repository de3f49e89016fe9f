"""data.normalize_on_device: the Trainer's loaders hand over uint8 batches and the pipeline's final
Normalize/ToFloat runs on the device — bit for bit what the loader would have produced, so a run's
numbers do not depend on where normalisation happens; loaders taken by hand keep the whole pipeline."""

from __future__ import annotations

import json

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2

from aistudio.data.classification import ClassificationDataset
from aistudio.data.datamodule import ProjectDataModule
from aistudio.data.pixel_scaling import split_scaling
from aistudio.runs.record import load_run
from tests.helpers import run_train

VALUE_STEPS = {
    "imagenet": A.Normalize(),
    "scalar mean/std": A.Normalize(mean=0.5, std=0.25),
    "max_pixel_value": A.Normalize(mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1), max_pixel_value=200.0),
    "to float": A.ToFloat(max_value=255),
    "to float, default max": A.ToFloat(),
}


@pytest.mark.parametrize("hwc", [False, True], ids=["CHW (detection lists)", "HWC (stacked batches)"])
@pytest.mark.parametrize("name", list(VALUE_STEPS))
def test_the_device_step_equals_the_loaders_bit_for_bit(name, hwc):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 30, 3), dtype=np.uint8) for _ in range(4)]
    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.ColorJitter(p=1.0), VALUE_STEPS[name], ToTensorV2()])
    split, scaling = split_scaling(pipeline, channels=3, hwc=hwc)
    assert scaling is not None and pipeline.transforms[-2].p == 1.0  # the original keeps its step
    assert type(pipeline.transforms[-1]) is ToTensorV2  # and its own last step
    for seed, image in enumerate(images):
        pipeline.set_random_seed(seed)
        split.set_random_seed(seed)
        whole, served = pipeline(image=image)["image"], split(image=image)["image"]
        assert served.dtype == torch.uint8 and whole.dtype == torch.float32
        assert served.shape == ((24, 30, 3) if hwc else (3, 24, 30))
        assert served.is_contiguous() == hwc  # ToTensorV2's is a transposed view; a stack copies it slowly
        batch = torch.stack([served, served])
        assert torch.equal(scaling(batch)[0], whole)  # same augmentation draws, same bits
        assert scaling(batch).is_contiguous()
        assert torch.equal(scaling([served])[0], whole)  # detection batches are lists of images
        channels_last = scaling(batch, channels_last=True)
        assert torch.equal(channels_last, whole.expand(2, -1, -1, -1))
        assert channels_last.is_contiguous(memory_format=torch.channels_last)


def test_stacked_hwc_batches_keep_masks_and_grayscale_as_the_loaders_had_them():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    mask = rng.integers(0, 3, (10, 12), dtype=np.uint8)
    pipeline = A.Compose([A.HorizontalFlip(p=1.0), A.Normalize(mean=0.5, std=0.2), ToTensorV2()])
    split, scaling = split_scaling(pipeline, channels=1, hwc=True)
    whole, served = pipeline(image=gray, mask=mask), split(image=gray, mask=mask)
    assert served["image"].shape == (10, 12, 1) and whole["image"].shape == (1, 10, 12)
    assert torch.equal(served["mask"], whole["mask"])  # masks as ToTensorV2 gives them
    assert torch.equal(scaling(served["image"][None])[0], whole["image"])


@pytest.mark.parametrize("pipeline", [
    A.Compose([A.Normalize(), A.CoarseDropout(p=1.0), ToTensorV2()]),  # a step after it sees floats
    A.Compose([A.Normalize(normalization="image"), ToTensorV2()]),  # per-image statistics
    A.Compose([A.Normalize(p=0.5), ToTensorV2()]),  # not always applied
    A.Compose([A.Resize(8, 8), A.Normalize()]),  # no ToTensorV2: numpy out
    A.Compose([A.Normalize(mean=(0.5, 0.5), std=(0.5, 0.5)), ToTensorV2()]),  # 2 values for 3 channels
], ids=["step after", "image statistics", "p < 1", "no ToTensorV2", "channel mismatch"])
def test_pipelines_that_cannot_be_split_keep_their_normalisation(pipeline):
    assert split_scaling(pipeline, channels=3) == (pipeline, None)


def test_only_the_loaders_a_running_trainer_takes_hand_over_uint8(color_project):
    pipeline = A.Compose([A.Resize(16, 16), A.Normalize(), ToTensorV2()])
    datamodule = ProjectDataModule(color_project, dataset=ClassificationDataset, batch_size=4, num_workers=1,
                                   train_transform=pipeline, eval_transform=pipeline)
    by_hand = next(iter(datamodule.val_dataloader()))  # a notebook's loader: normalised floats
    assert by_hand[0].dtype == torch.float32
    datamodule.uint8_batches = True  # as for a running Trainer
    served = next(iter(datamodule.val_dataloader()))
    assert served[0].dtype == torch.uint8 and served[0].shape == (4, 16, 16, 3)  # stacked channels last
    assert torch.equal(datamodule.on_after_batch_transfer(served, 0)[0], by_hand[0])
    assert torch.equal(datamodule.on_after_batch_transfer(by_hand, 0)[0], by_hand[0])  # floats pass through

    kept = ProjectDataModule(color_project, dataset=ClassificationDataset, batch_size=4, num_workers=0,
                             train_transform=pipeline, eval_transform=pipeline, normalize_on_device=False)
    kept.uint8_batches = True
    assert next(iter(kept.val_dataloader()))[0].dtype == torch.float32 and kept.pixel_scaling is None


def test_a_run_normalising_on_the_device_trains_exactly_as_one_normalising_in_the_workers(tmp_path, color_project):
    """Default path (DataLoader workers on, default callbacks and logger): the same seed gives the same
    losses and scores epoch by epoch, whichever side normalises (and whether the workers reuse their batch
    memory, which only uint8 batches do)."""
    epochs = {}
    for on_device in ("true", "false"):
        run_dir = tmp_path / f"run-{on_device}"
        result = run_train(["data=project", f"data.project={color_project}", "hardware=cpu", "data.image_size=32",
                            "data.batch_size=8", "model=resnet18", "augmentation=default", "plots=false",
                            "callbacks.progress_bar.kind=none", "trainer.max_epochs=2",
                            f"data.normalize_on_device={on_device}", f"hydra.run.dir={run_dir}"], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        record = load_run(run_dir)
        assert record["status"] == "completed" and record["speed"]["normalize_on_device"] is (on_device == "true")
        assert record["speed"]["reuse_batch_memory"] is (on_device == "true")  # only uint8 batches are stacked so
        entries = json.loads((run_dir / "metrics.json").read_text())
        epochs[on_device] = [{k: v for k, v in entry.items() if k.startswith(("train_", "val_"))} for entry in entries]
    assert len(epochs["true"]) == 2 and "val_loss" in epochs["true"][-1]
    assert epochs["true"] == epochs["false"]

