"""Detection and instance segmentation: masks, datasets under augmentation, models, mAP, end to end."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from aistudio.data.builtin import shapes_project
from aistudio.data.detection import DetectionDataset, collate_detection, decode_segmentation
from aistudio.data.project import load_project
from tests.helpers import CONF, assert_eval_reproduces_test, assert_onnx_export_matches, is_png, run_train

DETECTORS = sorted(p.stem for p in (CONF / "model").glob("*.yaml")
                   if "torchvision_detection" in p.read_text() and p.stem != "torchvision_detection")


def test_polygon_and_rle_decode_to_the_same_mask():
    from pycocotools import mask as mask_utils

    square = [[2.0, 3.0, 12.0, 3.0, 12.0, 9.0, 2.0, 9.0]]
    polygon_mask = decode_segmentation(square, 20, 16)
    assert polygon_mask.shape == (20, 16) and 50 <= polygon_mask.sum() <= 77
    compressed = mask_utils.encode(np.asfortranarray(polygon_mask))
    rle = {"size": compressed["size"], "counts": compressed["counts"].decode()}
    assert np.array_equal(decode_segmentation(rle, 20, 16), polygon_mask)
    uncompressed = {"size": [20, 16], "counts": [0, 320]}
    assert decode_segmentation(uncompressed, 20, 16).sum() == 320


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return shapes_project(tmp_path_factory.mktemp("data"), "detection", num_images=24, image_size=64, seed=3)


def pipelines(compose_cfg, name: str = "detection_default"):
    cfg = compose_cfg("task=detection", f"augmentation={name}", "data.horizontal_flip=0.5")
    return instantiate(cfg.augmentation.train), instantiate(cfg.augmentation.eval)


def test_augmented_boxes_stay_inside_and_masks_stay_aligned(compose_cfg, shapes):
    train, _ = pipelines(compose_cfg)
    project = load_project(shapes, task="instance_segmentation")
    dataset = DetectionDataset(project.images, train, masks=True)
    for seed in range(3):
        np.random.seed(seed)
        for index in range(len(dataset)):
            image, target = dataset[index]
            h, w = image.shape[-2:]
            boxes, masks = target["boxes"], target["masks"]
            assert image.dtype == torch.float32 and 0 <= float(image.min()) and float(image.max()) <= 1
            assert len(boxes) == len(target["labels"]) == len(masks)
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
            assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
            assert (target["labels"] >= 1).all() and (target["labels"] <= 3).all()
            for box, mask in zip(boxes, masks):
                ys, xs = torch.nonzero(mask, as_tuple=True)
                if len(xs) == 0:
                    continue
                x0, y0, x1, y1 = box.tolist()
                # the mask lies inside its box (a pixel of slack for resampling)
                assert xs.min() >= x0 - 1.5 and xs.max() <= x1 + 0.5 and ys.min() >= y0 - 1.5 and ys.max() <= y1 + 0.5


def test_an_image_whose_boxes_all_vanish_gives_empty_targets_the_model_accepts(shapes):
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    from aistudio.models.detection import build_detector

    project = load_project(shapes, task="instance_segmentation")
    record = next(r for r in project.images if r.objects)
    x, y, w, h = record.objects[0].bbox
    corner = [(0, 0), (64 - 8, 0), (0, 64 - 8), (64 - 8, 64 - 8)]
    empty_at = next((cx, cy) for cx, cy in corner
                    if all(not (o.bbox[0] < cx + 8 and cx < o.bbox[0] + o.bbox[2] and o.bbox[1] < cy + 8
                                and cy < o.bbox[1] + o.bbox[3]) for o in record.objects))
    crop = A.Compose([A.Crop(x_min=empty_at[0], y_min=empty_at[1], x_max=empty_at[0] + 8, y_max=empty_at[1] + 8),
                      A.ToFloat(max_value=255), ToTensorV2()],
                     bbox_params=A.BboxParams(format="coco", label_fields=["labels", "ids"], min_visibility=0.3,
                                              clip=True, filter_invalid_bboxes=True))
    image, target = DetectionDataset([record], crop, masks=True)[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["masks"].shape == (0, 8, 8)
    model = build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", 3, min_size=64, max_size=64)
    images, targets = collate_detection([(image, {k: v for k, v in target.items() if k != "masks"})])
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", DETECTORS)
def test_every_detector_config_trains_and_predicts(compose_cfg, name):
    cfg = compose_cfg("task=detection", f"model={name}", "data.image_size=64")
    model = instantiate(cfg.model, num_classes=3)
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}]
    if name.startswith("maskrcnn"):
        targets[0]["masks"] = torch.zeros((1, 64, 64), dtype=torch.uint8)
        targets[0]["masks"][0, 4:30, 4:30] = 1
        targets[1]["masks"] = torch.zeros((0, 48, 64), dtype=torch.uint8)
    model.train()
    losses = model(images, targets)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        predictions = model(images)
    assert len(predictions) == 2 and {"boxes", "labels", "scores"} <= set(predictions[0])


def test_detector_weights_are_never_downloaded(tmp_path, monkeypatch):
    from aistudio import AistudioError
    from aistudio.models.detection import build_detector

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(AistudioError, match="cannot be downloaded here"):
        build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", 3, weights_backbone="DEFAULT")
    with pytest.raises(AistudioError, match="Did you mean: fasterrcnn_resnet50_fpn"):
        build_detector("fasterrcnn_resnet50", 3)


def test_our_map_equals_pycocotools_cocoeval():
    """The module's mAP (torchmetrics, faster_coco_eval backend) against pycocotools on the same data."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from aistudio.tasks.detection import DetectionModule

    rng = np.random.default_rng(0)
    gts, preds, coco_images, coco_anns, coco_dets = [], [], [], [], []
    for image_id in range(12):
        n = int(rng.integers(1, 5))
        xy = rng.uniform(0, 80, (n, 2))
        wh = rng.uniform(8, 40, (n, 2))
        boxes = np.round(np.concatenate([xy, xy + wh], 1)).astype(np.float32)  # pixel corners, exact in float32
        labels = rng.integers(1, 4, n)
        shift, scale = rng.normal(0, 3, (n, 2)), rng.uniform(0.7, 1.3, (n, 2))
        jitter = np.concatenate([xy + shift, xy + shift + wh * scale], 1)  # imperfect but valid boxes
        extra = np.concatenate([rng.uniform(0, 80, (2, 2)), rng.uniform(0, 80, (2, 2)) + 20], 1)
        pred_boxes = np.round(np.concatenate([jitter, extra])).astype(np.float32)
        pred_labels = np.concatenate([labels, rng.integers(1, 4, 2)])
        scores = rng.uniform(0.05, 1.0, len(pred_boxes)).astype(np.float32)
        gts.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
        preds.append({"boxes": torch.tensor(pred_boxes, dtype=torch.float32), "labels": torch.tensor(pred_labels),
                      "scores": torch.tensor(scores, dtype=torch.float32)})
        coco_images.append({"id": image_id, "width": 128, "height": 128})
        for box, label in zip(boxes, labels):
            coco_anns.append({"id": len(coco_anns) + 1, "image_id": image_id, "category_id": int(label),
                              "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                              "iscrowd": 0, "area": float((box[2] - box[0]) * (box[3] - box[1]))})
        for box, label, score in zip(pred_boxes, pred_labels, scores):
            coco_dets.append({"image_id": image_id, "category_id": int(label), "score": float(score),
                              "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]})
    module = DetectionModule({"_target_": "torch.nn.Identity"}, {"_target_": "torch.optim.SGD", "_partial_": True},
                             class_names=["a", "b", "c"])
    module.val_map.update(preds, gts)
    module.val_map50.update(preds, gts)
    ours, ours50 = module.val_map.compute(), module.val_map50.compute()
    truth = COCO()
    truth.dataset = {"images": coco_images, "annotations": coco_anns,
                     "categories": [{"id": i, "name": str(i)} for i in (1, 2, 3)]}
    truth.createIndex()
    evaluation = COCOeval(truth, truth.loadRes(coco_dets), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    for index, key in enumerate(("map", "map_50", "map_75", "map_small", "map_medium", "map_large")):
        assert float(ours[key]) == pytest.approx(evaluation.stats[index], abs=1e-6), key
    assert 0.1 < evaluation.stats[1] < 1.0  # a non-trivial case
    # per-class AP at IoU 0.5 (logged as <stage>_ap50_<class>): COCOeval's precision at that threshold
    precision = evaluation.eval["precision"][0, :, :, 0, 2]  # [recall, class] at IoU .5, all areas, 100 dets
    for k, value in enumerate(ours50["map_per_class"].tolist()):
        column = precision[:, k]
        assert value == pytest.approx(float(column[column > -1].mean()), abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("task", "model", "monitor", "images", "epochs"), [
    ("detection", "fasterrcnn_mobilenet_v3_large_320_fpn", "val_map", 16, 2),
    ("instance_segmentation", "maskrcnn_resnet50_fpn_v2", "val_segm_map", 8, 1),  # the heaviest model: keep it short
])
def test_train_py_detection_tasks_end_to_end(tmp_path, task, model, monitor, images, epochs):
    run_dir = tmp_path / "run"
    result = run_train([f"task={task}", f"model={model}", "hardware=cpu", f"data.project.num_images={images}",
                        "data.project.image_size=64", "data.image_size=64", "data.batch_size=4",
                        f"trainer.max_epochs={epochs}",
                        "data.num_workers=0", "callbacks.progress_bar.kind=none", f"hydra.run.dir={run_dir}"],
                       tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Got processor for bboxes" not in result.stdout + result.stderr  # albumentations' eval-pipeline noise
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "completed" and run["best"]["metric"] == monitor
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics) == epochs and monitor in metrics[0] and "train_loss_classifier" in metrics[0]
    assert {"val_map_50", "val_ap_circle", "val_ap50_circle"} <= set(metrics[-1])
    assert "test_map" in run["test_metrics"] and (run_dir / "checkpoints" / "best.ckpt").is_file()
    if task == "instance_segmentation":
        assert "train_loss_mask" in metrics[0] and "test_segm_map" in run["test_metrics"]
    if task != "detection":
        return  # eval, plots and export are the same code for instance masks; checked once, on the lighter detector
    # eval.py rebuilds the run from config.json: the same test figures, per-class AP and AP50 among them
    evaluation = assert_eval_reproduces_test(run_dir, tmp_path)
    for name, figures in evaluation["per_class"].items():
        key = re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
        for figure in ("ap", "ap50"):
            logged = run["test_metrics"].get(f"test_{figure}_{key}")  # -1 or absent: no such object in the split
            assert figures[figure] == (logged if logged is not None and logged >= 0 else None)
    pictures = {p.name for p in (run_dir / "plots").glob("*.png") if is_png(p)}
    assert {"training_curves.png", "test_precision_recall.png", "test_examples.png"} <= pictures
    assert evaluation["pr_curves"]["bbox"] and len(evaluation["recall_thresholds"]) == 101
    record = assert_onnx_export_matches(run_dir, tmp_path)  # one image of any size in, as torchvision's detector
    assert record["input"]["shape"] == [3, "height", "width"] and list(record["outputs"]) == [
        "boxes", "labels", "scores"]


def test_class_counts_of_a_detection_project_count_objects(shapes):
    """What the build path hands every task as ``class_counts`` (saved in the checkpoint's hyper-parameters)."""
    project = load_project(shapes, task="detection")
    expected = [0] * project.num_classes
    for record in project.split("train"):
        for obj in record.objects:
            expected[obj.category] += 1
    assert project.class_counts("train") == expected and all(expected)
