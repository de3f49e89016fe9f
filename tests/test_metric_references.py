"""Logged metrics against independent references, computed on predictions saved from the same model.

Classification accuracy / macro F1 / precision / recall against scikit-learn, semantic segmentation
mIoU / Dice / pixel accuracy against a plain numpy confusion matrix, instance segmentation mask
(and box) mAP against pycocotools' COCOeval, and one end-to-end learnability check of ``train.py``.
Each module is the real task module built from the composed config, run through a real Trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from aistudio.data.builtin import shapes_project
from tests.helpers import FAST_TRAIN, edit_dataset, make_color_project, run_train


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One intra-op thread, here and in train.py subprocesses: on a 2-core machine shared with other jobs,
    OpenMP's spin-waiting makes these tiny models up to ~8x slower with 2 threads than with 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


def eval_trainer(epochs: int = 1) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def build(cfg, model: dict | None = None):
    """Datamodule + task module from a composed config, the way train.py instantiates them."""
    datamodule = instantiate(cfg.data)
    project = datamodule.project
    model = model or OmegaConf.to_container(cfg.model, resolve=True)
    module = instantiate(cfg.task.module, model={**model, "num_classes": project.num_classes},
                         optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True), scheduler=None,
                         class_names=project.classes, _recursive_=False, _convert_="all")
    return datamodule, module


# -- classification --------------------------------------------------------------------------------------------


def image_index(image: dict) -> tuple[str, int]:
    name, index = Path(image["file"]).stem.rsplit("_", 1)
    return name, int(index)


def three_way_split(data: dict) -> None:
    """24 images per class: 12 train, 8 val, 4 test (make_color_project puts only 2 per class in val)."""
    for image in data["images"]:
        _, index = image_index(image)
        image["split"] = ["train" if index < 12 else "val" if index < 20 else "test"]


# val images per class: unequal supports, so macro, weighted and micro averages all differ
VAL_PER_CLASS = {"red": 8, "green": 5, "blue": 2, "crimson": 6}


def unbalanced_split(data: dict) -> None:
    for image in data["images"]:
        name, index = image_index(image)
        image["split"] = ["val" if 12 <= index < 12 + VAL_PER_CLASS[name] else "test" if index >= 20 else "train"]


@torch.no_grad()
def predictions_of(module, loader) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities in float64, true labels) of the module in eval mode over ``loader``."""
    module.eval()
    probabilities, targets = [], []
    for images, labels in loader:
        probabilities.append(module(images).double().softmax(dim=1))
        targets.append(labels)
    return torch.cat(probabilities).numpy(), torch.cat(targets).numpy()


def test_classification_metrics_equal_scikit_learn(compose_cfg, tmp_path):
    from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score, recall_score

    # "crimson" images look exactly like "red" ones (same dominant channel): no model gets them all right
    root = make_color_project(tmp_path / "colors", per_class=24, seed=1, classes=("red", "green", "blue", "crimson"))
    edit_dataset(root, unbalanced_split)
    # AdamW: with SGD at lr 0.05 a few steps leave eval-mode BatchNorm statistics far off (one class predicted)
    cfg = compose_cfg("data=project", f"data.project={root}", *FAST_TRAIN, "optimizer=adamw", "optimizer.lr=1e-3")
    pl.seed_everything(0, verbose=False)
    datamodule, module = build(cfg)
    trainer = eval_trainer(epochs=1)
    trainer.fit(module, datamodule=datamodule)
    logged = {**trainer.validate(module, datamodule=datamodule, verbose=False)[0],
              **trainer.test(module, datamodule=datamodule, verbose=False)[0]}

    labels = np.arange(datamodule.num_classes)
    for stage, loader in (("val", datamodule.val_dataloader()), ("test", datamodule.test_dataloader())):
        probabilities, truth = predictions_of(module, loader)
        predicted = probabilities.argmax(axis=1)
        assert len(truth) == {"val": sum(VAL_PER_CLASS.values()), "test": 16}[stage]
        reference = {
            "acc": accuracy_score(truth, predicted),
            "f1": f1_score(truth, predicted, labels=labels, average="macro", zero_division=0),
            "precision": precision_score(truth, predicted, labels=labels, average="macro", zero_division=0),
            "recall": recall_score(truth, predicted, labels=labels, average="macro", zero_division=0),
            "loss": log_loss(truth, probabilities, labels=labels),  # mean cross-entropy over images
        }
        print(stage, {k: (round(float(logged[f"{stage}_{k}"]), 6), round(v, 6)) for k, v in reference.items()},
              "predicted", np.bincount(predicted, minlength=4).tolist())
        if stage == "val":  # the comparison can fail: some, not all, predictions are right, and the
            # averages the module claims (micro accuracy, macro F1/precision/recall) differ from the others
            assert 0.0 < reference["acc"] < 1.0
            others = [f1_score(truth, predicted, labels=labels, average=a) for a in ("weighted", "micro")]
            assert all(abs(reference["f1"] - other) > 1e-3 for other in others), (reference["f1"], others)
        for name, value in reference.items():
            tolerance = {"rel": 1e-5} if name == "loss" else {"abs": 1e-6}  # the logged loss is float32
            assert float(logged[f"{stage}_{name}"]) == pytest.approx(value, **tolerance), f"{stage}_{name}"


# -- semantic segmentation ----------------------------------------------------------------------------------------


class TinySegmenter(torch.nn.Module):
    """Per-pixel logits from a 5x5 neighbourhood, in torchvision's segmentation output format."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 5, padding=2), torch.nn.ReLU(),
                                        torch.nn.Conv2d(16, num_classes, 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.body(images)}


def add_ignored_pixels(semantic_json: str, ignore: int = 255) -> int:
    """Mark a band and a block of every mask as ignored; returns how many pixels were marked."""
    root = Path(semantic_json).parent
    marked = 0
    for path in sorted((root / "masks").glob("*.png")):
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        mask[:5] = ignore
        mask[20:32, 40:52] = ignore  # often over a shape
        marked += int((mask == ignore).sum())
        cv2.imwrite(str(path), mask)
    return marked


def confusion(truth: np.ndarray, predicted: np.ndarray, num_classes: int, ignore: int) -> np.ndarray:
    """rows: true class, columns: predicted class; ignored pixels count nowhere."""
    valid = truth != ignore
    pairs = truth[valid].astype(np.int64) * num_classes + predicted[valid].astype(np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def reference_segmentation_metrics(matrix: np.ndarray) -> dict[str, float]:
    tp = np.diag(matrix).astype(np.float64)
    truth, predicted = matrix.sum(1), matrix.sum(0)
    union = truth + predicted - tp
    seen = union > 0  # classes absent from both prediction and target are not averaged
    return {"miou": float((tp[seen] / union[seen]).mean()),
            "dice": float((2 * tp[seen] / (truth + predicted)[seen]).mean()),
            "pixel_acc": float(tp.sum() / matrix.sum())}


def test_segmentation_metrics_equal_a_numpy_confusion_matrix(compose_cfg, tmp_path):
    semantic = shapes_project(tmp_path / "data", task="semantic_segmentation", num_images=32, image_size=64, seed=5)
    assert add_ignored_pixels(semantic) > 0
    cfg = compose_cfg("task=semantic_segmentation", "data=project", f"data.project={semantic}", "data.image_size=64",
                      "data.batch_size=8", "data.num_workers=0", "hardware=cpu", "optimizer=adamw",
                      "optimizer.lr=1e-2")
    pl.seed_everything(0, verbose=False)
    # a small per-pixel network instead of LR-ASPP: a few CPU seconds of training give it partly right
    # predictions, where LR-ASPP's eval-mode BatchNorm statistics still predict one class everywhere
    datamodule, module = build(cfg, model={"_target_": "tests.test_metric_references.TinySegmenter"})
    trainer = eval_trainer(epochs=3)
    trainer.fit(module, datamodule=datamodule)
    logged = trainer.validate(module, datamodule=datamodule, verbose=False)[0]

    module.eval()
    num_classes, ignore = datamodule.num_classes, module.ignore_index
    matrix = np.zeros((num_classes, num_classes), np.int64)
    as_background = matrix.copy()  # what counting ignored pixels as background would give
    ignored = 0
    with torch.no_grad():
        for images, masks in datamodule.val_dataloader():
            predicted = module(images)["out"].argmax(dim=1).numpy()
            matrix += confusion(masks.numpy(), predicted, num_classes, ignore)
            as_background += confusion(np.where(masks.numpy() == ignore, 0, masks.numpy()), predicted, num_classes,
                                       ignore)
            ignored += int((masks == ignore).sum())
    reference = reference_segmentation_metrics(matrix)
    wrong = reference_segmentation_metrics(as_background)
    print("confusion matrix\n", matrix, "\nignored pixels", ignored)
    print({k: (round(float(logged[f"val_{k}"]), 6), round(v, 6)) for k, v in reference.items()})
    assert ignored > 0 and (matrix.sum(0) > 0).sum() >= 2  # ignored pixels present, more than one class predicted
    assert 0.0 < reference["miou"] < 1.0
    assert all(abs(reference[k] - wrong[k]) > 1e-4 for k in reference), wrong  # ignored pixels matter here
    for name, value in reference.items():
        assert float(logged[f"val_{name}"]) == pytest.approx(value, abs=1e-6), f"val_{name}"


# -- instance segmentation ------------------------------------------------------------------------------------------


def image_key(image: torch.Tensor) -> bytes:
    return image.numpy().tobytes()


class ReplayDetector(torch.nn.Module):
    """Stands in for Mask R-CNN: returns predictions prepared per image, in torchvision's output format."""

    def __init__(self, predictions: dict[bytes, dict[str, torch.Tensor]]):
        super().__init__()
        self.predictions = predictions

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [{k: v.clone() for k, v in self.predictions[image_key(image)].items()} for image in images]


# IoUs that fall exactly on a COCO threshold which float32 cannot represent (0.55, 0.6, 0.8, 0.85): a float32
# threshold (torchmetrics' default) would not count such a match, COCOeval's float64 ones do
EXACT_IOUS = ((11, 20), (3, 5), (4, 5), (17, 20))


def mask_with_iou(mask: np.ndarray, p: int, q: int) -> np.ndarray | None:
    """A mask whose IoU with ``mask`` is exactly p/q: keep p*s of its pixels, add pixels around it up to q*s
    (None when no whole s has p*s <= area <= q*s)."""
    area = int(mask.sum())
    s = area // p
    if s == 0 or q * s < area:
        return None
    inside = np.flatnonzero(mask)
    out = np.zeros(mask.size, np.uint8)
    out[inside[:p * s]] = 1
    grown, missing = mask, q * s - area
    while missing > 0:
        grown = cv2.dilate(grown, np.ones((3, 3), np.uint8))
        ring = np.flatnonzero(grown.reshape(-1) & ~mask.reshape(-1).astype(bool))
        if len(ring) >= missing:
            out[ring[:missing]] = 1
            missing = 0
    out = out.reshape(mask.shape)
    intersection, union = int((out & mask).sum()), int((out | mask).sum())
    assert intersection * q == union * p, (intersection, union, p, q)
    return out


def noisy_predictions(target: dict[str, torch.Tensor], rng: np.random.Generator, num_classes: int,
                      exact: list[float]) -> dict[str, torch.Tensor]:
    """Shifted, grown or shrunk copies of the true masks, or ones at an exact IoU (some with the wrong
    class), plus false positives, as soft (N, 1, H, W) probabilities like Mask R-CNN's."""
    masks = target["masks"].numpy().astype(np.uint8)
    height, width = masks.shape[-2:]
    kernel = np.ones((3, 3), np.uint8)
    binary, labels = [], []
    for mask, label in zip(masks, target["labels"].tolist()):
        if rng.random() < 0.15:
            continue  # missed
        change = rng.integers(0, 4)
        p, q = EXACT_IOUS[rng.integers(0, len(EXACT_IOUS))]
        moved = mask_with_iou(mask, p, q) if change == 3 else None
        if moved is not None:
            exact.append(p / q)
        else:
            moved = np.roll(mask, tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
            moved = cv2.dilate(moved, kernel) if change == 1 else cv2.erode(moved, kernel) if change == 2 else moved
        if moved.sum() < 4:
            moved = mask
        binary.append(moved)
        labels.append(label if rng.random() < 0.8 else int(rng.integers(1, num_classes + 1)))
    for _ in range(int(rng.integers(0, 3))):  # false positives
        blob = np.zeros((height, width), np.uint8)
        x, y = rng.integers(0, width - 12), rng.integers(0, height - 12)
        size = rng.integers(4, 12, 2)
        blob[y:y + size[1], x:x + size[0]] = 1
        binary.append(blob)
        labels.append(int(rng.integers(1, num_classes + 1)))
    soft = [np.where(b > 0, rng.uniform(0.55, 1.0, b.shape), rng.uniform(0.0, 0.45, b.shape)) for b in binary]
    boxes = []
    for b in binary:
        ys, xs = np.nonzero(b)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    count = len(binary)
    return {"boxes": torch.tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.tensor(rng.uniform(0.05, 1.0, count), dtype=torch.float32),
            "masks": torch.tensor(np.asarray(soft, np.float32).reshape(count, 1, height, width))}


def coco_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def cocoeval(images: list[dict], annotations: list[dict], detections: list[dict], categories: int, iou_type: str):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = COCO()
    truth.dataset = {"images": images, "annotations": annotations,
                     "categories": [{"id": i, "name": str(i)} for i in range(1, categories + 1)]}
    truth.createIndex()
    evaluation = COCOeval(truth, truth.loadRes(detections), iou_type)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation


def test_instance_segmentation_mask_map_equals_pycocotools_cocoeval(compose_cfg, tmp_path):
    from pycocotools import mask as mask_utils

    project = shapes_project(tmp_path / "data", task="instance_segmentation", num_images=100, image_size=64, seed=7)
    cfg = compose_cfg("task=instance_segmentation", "data=project", f"data.project={project}", "data.image_size=64",
                      "data.batch_size=4", "data.num_workers=0", "hardware=cpu")
    datamodule, module = build(cfg, model={"_target_": "torch.nn.Identity"})  # the model is replaced below
    assert module.iou_types == ("bbox", "segm")
    num_classes = datamodule.num_classes

    rng = np.random.default_rng(0)
    replay: dict[bytes, dict[str, torch.Tensor]] = {}
    coco_images, coco_annotations, detections = [], [], {"bbox": [], "segm": []}
    exact: list[float] = []
    for image_id, (image, target) in enumerate(datamodule.val_dataloader().dataset):
        prediction = noisy_predictions(target, rng, num_classes, exact)
        replay[image_key(image)] = prediction
        height, width = image.shape[-2:]
        coco_images.append({"id": image_id, "height": int(height), "width": int(width)})
        for box, label, mask in zip(target["boxes"].tolist(), target["labels"].tolist(), target["masks"].numpy()):
            rle = coco_rle(mask)
            coco_annotations.append({"id": len(coco_annotations) + 1, "image_id": image_id, "category_id": label,
                                     "segmentation": rle, "area": float(mask_utils.area(rle)), "iscrowd": 0,
                                     "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
        for box, label, score, soft in zip(prediction["boxes"].tolist(), prediction["labels"].tolist(),
                                           prediction["scores"].tolist(), prediction["masks"][:, 0].numpy()):
            common = {"image_id": image_id, "category_id": label, "score": score}
            detections["segm"].append({**common, "segmentation": coco_rle(soft >= 0.5)})
            detections["bbox"].append({**common, "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    print(len(coco_images), "images", len(coco_annotations), "objects", len(detections["segm"]), "predictions;",
          "at an exact IoU:", exact)
    assert len(coco_images) >= 6 and len(coco_annotations) >= 12 and len(set(exact)) >= 3
    module.model = ReplayDetector(replay)

    logged = eval_trainer().validate(module, datamodule=datamodule, verbose=False)[0]
    summary = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")
    stats_index = {"map": 0, "map_50": 1, "map_75": 2, "map_small": 3, "map_medium": 4, "map_large": 5,
                   "mar_1": 6, "mar_10": 7, "mar_100": 8}
    for iou_type, prefix in (("segm", "val_segm_"), ("bbox", "val_")):
        evaluation = cocoeval(coco_images, coco_annotations, detections[iou_type], num_classes, iou_type)
        print(iou_type, {k: (round(float(logged[prefix + k]), 6), round(float(evaluation.stats[stats_index[k]]), 6))
                         for k in summary})
        assert 0.1 < evaluation.stats[0] < 0.9  # a non-trivial case
        for key in summary:
            assert float(logged[prefix + key]) == pytest.approx(evaluation.stats[stats_index[key]], abs=1e-6), \
                prefix + key
        # per class AP over IoU 0.50:0.95 (logged as val_segm_ap_<class> / val_ap_<class>)
        precision = evaluation.eval["precision"][:, :, :, 0, 2]  # [iou, recall, class], all areas, 100 dets
        for k, name in enumerate(datamodule.class_names):
            column = precision[:, :, k]
            expected = float(column[column > -1].mean()) if (column > -1).any() else -1.0
            assert float(logged[f"{prefix}ap_{name}"]) == pytest.approx(expected, abs=1e-6), f"{prefix}ap_{name}"
            at_50 = column[0][column[0] > -1]  # IoU 0.5 alone (logged as val_segm_ap50_<class> / val_ap50_<class>)
            expected = float(at_50.mean()) if len(at_50) else -1.0
            assert float(logged[f"{prefix}ap50_{name}"]) == pytest.approx(expected, abs=1e-6), f"{prefix}ap50_{name}"


# -- learnability, end to end ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_py_learns_a_tiny_colour_task(tmp_path):
    root = make_color_project(tmp_path / "colors", per_class=24, seed=2)
    edit_dataset(root, three_way_split)
    run_dir = tmp_path / "run"
    result = run_train(["data=project", f"data.project={root}", *FAST_TRAIN, "optimizer=adamw",
                        "optimizer.lr=1e-3", "trainer.max_epochs=3", f"hydra.run.dir={run_dir}"], tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((run_dir / "run.json").read_text())
    print("test metrics", run["test_metrics"], "best", run["best"])
    assert run["status"] == "completed"
    assert run["test_metrics"]["test_acc"] >= 0.9, run["test_metrics"]
