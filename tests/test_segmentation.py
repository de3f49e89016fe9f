"""Semantic segmentation: mask decoding and alignment, the model builders, the module, and train.py end to end."""

from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import cv2
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from hydra.utils import instantiate

from aistudio import AistudioError, user_error
from aistudio.data.builtin import shapes_project
from aistudio.data.datamodule import ProjectDataModule
from aistudio.data.images import ImageReadError
from aistudio.data.project import DatasetError, load_project, write_project
from aistudio.data.segmentation import SegmentationDataset
from aistudio.models.segmentation import build_segmenter
from aistudio.tasks.segmentation import SemanticSegmentationModule, soft_dice_loss
from tests.helpers import assert_eval_reproduces_test, assert_onnx_export_matches, is_png, run_train

LRASPP = {"_target_": "aistudio.models.segmentation.build_segmenter", "name": "lraspp_mobilenet_v3_large",
          "num_classes": 4}
ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 3e-3}
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)  # class -> colour


def mask_project(root: Path, mask: np.ndarray, classes: list[str], **extra) -> Path:
    """One-image train/val project whose mask (raw pixel values) is ``mask``."""
    root.mkdir(parents=True, exist_ok=True)
    image = np.zeros((*mask.shape, 3), np.uint8)
    cv2.imwrite(str(root / "image.png"), image)
    cv2.imwrite(str(root / "mask.png"), mask)
    entry = {"file": "image.png", "mask": "mask.png"}
    write_project(root, classes, [{**entry, "split": ["train"]}, {**entry, "split": ["val"]}], **extra)
    return root


def dataset_for(root: Path, transform=None) -> SegmentationDataset:
    project = load_project(root, task="semantic_segmentation")
    return SegmentationDataset(project.split("train"), transform, 3, project=project)


def test_mask_values_map_to_classes_and_unlisted_values_are_ignored(tmp_path):
    raw = np.array([[0, 128, 255, 7]] * 4, np.uint8)
    root = mask_project(tmp_path / "p", raw, ["background", "cell"], mask_values=[0, 128], ignore_index=255)
    image, mask = dataset_for(root)[0]
    assert image.dtype == torch.float32 and image.shape == (3, 4, 4)
    assert mask.dtype == torch.int64 and mask[0].tolist() == [0, 1, 255, 255]


def test_ignore_value_in_mask_values_is_a_class(tmp_path):
    """ISBI membrane labels: 0 = membrane, 255 = cell, with the default ignore_index 255."""
    raw = np.array([[0, 255, 3]], np.uint8)
    root = mask_project(tmp_path / "p", raw, ["membrane", "cell"], mask_values=[0, 255])
    assert dataset_for(root)[0][1][0].tolist() == [0, 1, 255]


def test_identity_masks_reject_values_that_are_not_classes(tmp_path):
    good = mask_project(tmp_path / "good", np.array([[0, 2, 255]], np.uint8), ["a", "b", "c"])
    assert dataset_for(good)[0][1][0].tolist() == [0, 2, 255]
    bad = mask_project(tmp_path / "bad", np.array([[0, 9, 255]], np.uint8), ["a", "b", "c"])
    with pytest.raises(DatasetError, match=r"(?s)mask.png.*\[9\].*mask_values"):
        dataset_for(bad)[0]


def test_undecodable_mask_names_the_file(tmp_path):
    root = mask_project(tmp_path / "p", np.zeros((4, 4), np.uint8), ["a", "b"])
    project = load_project(root, task="semantic_segmentation")
    (root / "mask.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageReadError, match=r"mask.png: cannot decode this mask \(truncated"):
        SegmentationDataset(project.split("train"), None, 3, project=project)[0]
    (root / "mask.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="mask.png: cannot decode this mask"):
        SegmentationDataset(project.split("train"), None, 3, project=project)[0]


def block_sample(rng: np.random.Generator, size: int = 64, block: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """An image whose colour encodes the class of each pixel: random 8x8 blocks of 4 classes."""
    classes = rng.integers(0, 4, (size // block, size // block)).astype(np.uint8)
    mask = np.kron(classes, np.ones((block, block), np.uint8))
    return PALETTE[mask], mask


def test_train_augmentation_keeps_image_and_mask_aligned(compose_cfg):
    """Property: after the configured crop/flip the mask still matches the image colours."""
    cfg = compose_cfg("task=semantic_segmentation", "data=project", "data.project=unused", "data.image_size=48")
    configured = instantiate(cfg.augmentation.train)
    geometric = A.Compose([t for t in configured.transforms if isinstance(t, A.DualTransform)])
    assert len(geometric.transforms) >= 2  # crop + flip
    rng = np.random.default_rng(0)
    agreement, shuffled = [], []
    for seed in range(20):
        image, mask = block_sample(rng)
        geometric.set_random_seed(seed)
        out = geometric(image=image, mask=mask)
        pure = (out["image"][:, :, None, :] == PALETTE[None, None]).all(-1)  # pixels of exactly one class colour
        exact = pure.any(-1)
        colour_class = pure.argmax(-1)
        assert set(np.unique(out["mask"])) <= {0, 1, 2, 3}  # nearest neighbour: no interpolated labels
        agreement.append((colour_class == out["mask"])[exact].mean())
        shuffled.append((colour_class == out["mask"][:, ::-1])[exact].mean())
    assert min(agreement) == 1.0, agreement
    assert np.mean(shuffled) < 0.6  # the check would catch a mask flipped without its image

    full = configured(image=image, mask=mask)
    assert full["image"].shape == (3, 48, 48) and full["image"].dtype == torch.float32
    assert full["mask"].shape == (48, 48)
    evaluated = instantiate(cfg.augmentation.eval)(image=image, mask=mask)
    assert evaluated["mask"].shape == (48, 48) and set(np.unique(evaluated["mask"].numpy())) <= {0, 1, 2, 3}


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_builder_outputs_per_pixel_logits(name):
    aux = name.startswith("deeplabv3")
    model = build_segmenter(name, 5, aux_loss=aux or None, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 64, 64))
    assert out["out"].shape == (2, 5, 64, 64)
    assert ("aux" in out) == aux and (not aux or out["aux"].shape == (2, 5, 64, 64))


def test_builder_errors_are_clear():
    with pytest.raises(AistudioError, match="Did you mean: deeplabv3_resnet50"):
        build_segmenter("deeplabv3_resnet5", 3)
    with pytest.raises(AistudioError, match="set model.aux_loss=null"):
        build_segmenter("lraspp_mobilenet_v3_large", 3, aux_loss=True)
    with pytest.raises(AistudioError, match="model.weights_backbone='NOPE' is not a torchvision weights name"):
        build_segmenter("fcn_resnet50", 3, weights_backbone="NOPE")


def test_soft_dice_ignores_ignored_pixels():
    target = torch.tensor([[[0, 1], [1, 255]]])
    perfect = torch.nn.functional.one_hot(target.clamp(max=1), 2).permute(0, 3, 1, 2).float() * 50
    perfect[0, :, 1, 1] = torch.tensor([-50.0, 50.0])  # wrong at the ignored pixel only
    assert soft_dice_loss(perfect, target, 255, eps=1e-6) < 1e-3
    assert soft_dice_loss(-perfect, target, 255, eps=1e-6) > 0.99


def test_head_parameters_are_the_classifiers():
    module = SemanticSegmentationModule({**LRASPP, "name": "deeplabv3_mobilenet_v3_large", "aux_loss": True}, ADAMW)
    names = module.head_parameter_names()
    assert names and {n.split(".")[0] for n in names} == {"classifier", "aux_classifier"}
    with pytest.raises(AistudioError, match="class_weights"):
        SemanticSegmentationModule(LRASPP, ADAMW, class_weights=[0.0] * 4)  # what `balanced` gives masks


def shapes_datamodule(root: Path) -> ProjectDataModule:
    pipeline = A.Compose([A.Normalize(), ToTensorV2()])
    project = shapes_project(root, task="semantic_segmentation", num_images=24, image_size=64)
    return ProjectDataModule(project, dataset=SegmentationDataset, task="semantic_segmentation", batch_size=8,
                             num_workers=0, train_transform=pipeline, eval_transform=pipeline)


def test_module_fits_and_logs_segmentation_metrics(tmp_path):
    torch.manual_seed(0)
    module = SemanticSegmentationModule(LRASPP, ADAMW, class_names=["background", "circle", "square", "triangle"],
                                        dice_weight=0.5, class_weights=[0.5, 1.0, 1.0, 1.0])
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    data = shapes_datamodule(tmp_path)
    trainer.fit(module, datamodule=data)
    logged = trainer.callback_metrics
    for stage in ("train", "val"):
        for metric in ("miou", "dice", "pixel_acc"):
            assert 0.0 <= float(logged[f"{stage}_{metric}"]) <= 1.0, f"{stage}_{metric}"
        assert torch.isfinite(logged[f"{stage}_loss"])
    probabilities = module.predict_step(next(iter(data.val_dataloader())), 0)
    assert probabilities.shape[1:] == (4, 64, 64) and torch.allclose(probabilities.sum(1), torch.ones(1))


def test_ignore_index_must_match_the_dataset(tmp_path):
    module = SemanticSegmentationModule(LRASPP, ADAMW, ignore_index=0)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(AistudioError, match="set task.module.ignore_index=255"):
        trainer.fit(module, datamodule=shapes_datamodule(tmp_path))


@pytest.mark.slow
def test_train_py_semantic_segmentation_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(["task=semantic_segmentation", "data.project.num_images=24", "data.project.image_size=64",
                        "data.image_size=64", "trainer.max_epochs=2", "hardware=cpu", "data.num_workers=0",
                        "callbacks.progress_bar.kind=none", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "completed" and run["task"] == "semantic_segmentation"
    assert run["model"] == "lraspp_mobilenet_v3_large" and run["best"]["metric"] == "val_miou"
    assert run["best"]["checkpoint"] == "checkpoints/best.ckpt" and (run_dir / "checkpoints" / "best.ckpt").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [0, 1]
    for entry in metrics:
        assert {"train_loss", "train_miou", "val_loss", "val_miou", "val_dice", "val_pixel_acc"} <= set(entry)
        assert 0.0 <= entry["val_miou"] <= 1.0
    assert {"test_miou", "test_dice", "test_pixel_acc", "test_loss"} <= set(run["test_metrics"])
    # eval.py rebuilds the run from config.json: the same test figures, plus per-class IoU
    evaluation = assert_eval_reproduces_test(run_dir, tmp_path)
    matrix = evaluation["confusion_matrix"]
    ious = [v["iou"] for v in evaluation["per_class"].values() if v["iou"] is not None]
    assert len(matrix) == len(evaluation["per_class"]) == len(evaluation["dataset"]["classes"])
    assert evaluation["dataset"]["sha256"] == run["dataset"]["sha256"] and len(run["dataset"]["sha256"]) == 64
    assert evaluation["metrics"]["test_miou"] == pytest.approx(sum(ious) / len(ious), abs=1e-5)
    total = sum(map(sum, matrix))
    assert {"plots/training_curves.png", "plots/test_confusion_matrix.png", "plots/test_examples.png"} <= {
        str(p.relative_to(run_dir)) for p in (run_dir / "plots").glob("*.png") if is_png(p)}
    record = assert_onnx_export_matches(run_dir, tmp_path)  # (N, K, H, W) logits, dynamic batch
    assert record["input"]["shape"] == ["batch", 3, 64, 64] and record["check"]["batch"] >= 3
    assert evaluation["metrics"]["test_pixel_acc"] == pytest.approx(sum(matrix[i][i] for i in range(len(matrix))) / total,
                                                                    abs=1e-5)


def test_membrane_recipe_takes_the_project_from_config(compose_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("AISTUDIO_MEMBRANE", str(tmp_path / "membrane"))
    cfg = compose_cfg("experiment=membrane")
    assert cfg.task.name == "semantic_segmentation" and cfg.data.project == str(tmp_path / "membrane")
    assert cfg.data.image_size == 256 and cfg.model._target_.endswith("build_segmenter")
    monkeypatch.delenv("AISTUDIO_MEMBRANE")
    with pytest.raises(Exception) as info:
        instantiate(compose_cfg("experiment=membrane").data)
    assert "data.project is not set" in str(user_error(info.value))


def test_bn_momentum_reaches_every_batchnorm_of_a_mobilenet_segmenter():
    import torch

    from aistudio.models.segmentation import build_segmenter

    default = build_segmenter("lraspp_mobilenet_v3_large", 2)
    tuned = build_segmenter("lraspp_mobilenet_v3_large", 2, bn_momentum=0.1)
    norms = [m for m in tuned.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 for m in norms)
    assert 0.01 in {m.momentum for m in default.modules() if isinstance(m, torch.nn.BatchNorm2d)}  # the backbone


def test_full_check_applies_the_training_mask_rule(tmp_path):
    """validate --check-images full decodes masks as training does: values that are not classes fail
    both; values outside mask_values are a warning (training ignores those pixels)."""
    bad = mask_project(tmp_path / "bad", np.array([[0, 9, 255]], np.uint8), ["a", "b", "c"])
    load_project(bad, task="semantic_segmentation")  # the header check cannot see pixel values
    with pytest.raises(DatasetError) as info:
        load_project(bad, task="semantic_segmentation", check_images="full")
    problems = info.value.problems  # the train and the val entry share the mask
    assert [p.split(":")[0] for p in problems] == ["images[0] (image.png)", "images[1] (image.png)"], problems
    assert all("[9]" in p and "mask_values" in p for p in problems)
    listed = mask_project(tmp_path / "listed", np.array([[0, 128, 7, 255]], np.uint8), ["bg", "cell"],
                          mask_values=[0, 128])
    project = load_project(listed, task="semantic_segmentation", check_images="full")
    assert any("[7]" in w and "ignores those pixels" in w for w in project.warnings), project.warnings
    wrong = mask_project(tmp_path / "wrong", np.zeros((2, 2), np.uint8), ["bg", "cell"], mask_values=[0, 0])
    with pytest.raises(DatasetError, match="distinct pixel value"):
        load_project(wrong, task="semantic_segmentation")
