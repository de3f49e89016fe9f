"""predict.py: a trained run's predictions on new images, in the task's standard formats.

Unit tests cover the inputs, the writers (fed standard predictions, no model) and the mapping of model
outputs back to the original image; the slow ones train one tiny run per task (once per module) and
run predict.py as users do.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from aistudio import AistudioError
from aistudio.evaluation.predict import PredictOptions
from aistudio.evaluation.prediction_inputs import resolve_inputs, unique_stems
from aistudio.evaluation.prediction_writers import (
    ClassificationWriter,
    ClassProbabilities,
    Detections,
    DetectionWriter,
    LabelMap,
    LabelMapWriter,
    OutputFolder,
    PredictedImage,
    draw_overlay,
)
from tests.helpers import assert_onnx_export_matches, make_color_project, run_entry, run_train

CLASSES = ["red", "green", "blue"]
CLASSIFICATION_DATA = {"task": "classification", "split_index": 0,
                       "annotations": {"_target_": "aistudio.data.annotation_parsers.ClassLabels"}}


def write_png(path: Path, height: int = 20, width: int = 30, value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), value, np.uint8))
    return path


# -- inputs -------------------------------------------------------------------------------------------
def test_a_folder_is_searched_recursively_for_images_with_unique_output_stems(tmp_path):
    folder = tmp_path / "photos"
    for name in ("b.png", "a.jpg", "a.png", "sub/c.png", ".hidden/d.png", ".e.png"):
        write_png(folder / name)
    (folder / "notes.txt").write_text("not an image")
    inputs = resolve_inputs(str(folder), "all", CLASSIFICATION_DATA)
    assert [i.name for i in inputs.images] == ["a.jpg", "a.png", "b.png", "sub/c.png"]
    assert [i.stem for i in inputs.images] == ["a.jpg", "a.png", "b", "sub/c"]
    assert [i.image_id for i in inputs.images] == [1, 2, 3, 4]
    assert (inputs.kind, inputs.label, inputs.ignored_files) == ("folder", "photos", 1)
    single = resolve_inputs(str(folder / "b.png"), "all", CLASSIFICATION_DATA)
    assert (single.kind, [i.name for i in single.images]) == ("image", ["b.png"])
    assert unique_stems(["x.jpg", "x.png", "x.jpg"]) == ["x.jpg", "x.png", "x.jpg-2"]


def test_a_dataset_json_gives_its_images_by_split(tmp_path):
    project = make_color_project(tmp_path / "colors", per_class=6)
    for reference in (project, project / "dataset.json"):
        inputs = resolve_inputs(str(reference), "test", CLASSIFICATION_DATA)
        assert inputs.kind == "dataset" and inputs.label == "colors" and len(inputs.images) == 6
        assert all(i.name.startswith("img/") and i.stem == i.name[:-4] for i in inputs.images)
    every = resolve_inputs(str(project), "all", CLASSIFICATION_DATA)
    assert len(every.images) == 18 and [i.image_id for i in every.images] == list(range(1, 19))


def broken_project(folder: Path) -> Path:
    folder.mkdir()
    (folder / "dataset.json").write_text('{"version": 1, "classes": ["red"], "images": [{"file": "a.png"}]}')
    return folder


@pytest.mark.parametrize(("make", "split", "message"), [
    (lambda tmp: tmp / "missing", "all", "no such file or folder"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "all", "no images in"),
    (lambda tmp: write_png(tmp / "one.png"), "test", "split=test applies to a dataset.json input"),
    (lambda tmp: broken_project(tmp / "d"), "all", "nothing was predicted"),
])
def test_bad_inputs_are_one_error_naming_the_path(tmp_path, make, split, message):
    path = make(tmp_path)
    with pytest.raises(AistudioError, match=message) as error:
        resolve_inputs(str(path), split, CLASSIFICATION_DATA)
    assert str(path) in str(error.value)


def test_options_are_checked_naming_the_key():
    assert PredictOptions(batch_size="4", topk=3).checked().batch_size == 4
    for options, message in ((PredictOptions(topk=-1), "topk=-1"), (PredictOptions(score_threshold=2), "score_thr"),
                             (PredictOptions(batch_size=2.5), "batch_size=2.5"),
                             (PredictOptions(save_overlays="yes"), "save_overlays=yes"),
                             (PredictOptions(mask_format="rgb"), "mask_format=rgb: use one of index, values")):
        with pytest.raises(AistudioError, match=message):
            options.checked()


# -- writers: standard predictions in, files out (no model) --------------------------------------------
def image(name: str, image_id: int = 1, width: int = 40, height: int = 30, file: Path | None = None) -> PredictedImage:
    return PredictedImage(name, name.rsplit(".", 1)[0], image_id, width, height, file)


def test_classification_writer_streams_csv_and_json(tmp_path):
    writer = ClassificationWriter(tmp_path, CLASSES, topk=5)  # more than the classes: all 3
    writer.write(image("a.png"), ClassProbabilities(np.array([0.2, 0.7, 0.1])))
    writer.write(image("sub/b.png"), ClassProbabilities(np.array([0.5, 0.1, 0.4])))
    assert writer.close()["predictions"] == 2
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert [(r["file"], r["label"], r["top2_label"], r["top3_label"]) for r in rows] == [
        ("a.png", "green", "red", "blue"), ("sub/b.png", "red", "blue", "green")]
    assert float(rows[0]["score"]) == pytest.approx(0.7) and "top4_label" not in rows[0]
    listed = json.loads((tmp_path / "predictions.json").read_text())
    assert listed[1] == {"file": "sub/b.png", "label": "red", "score": 0.5,
                         "topk": [{"label": "red", "score": 0.5}, {"label": "blue", "score": 0.4},
                                  {"label": "green", "score": 0.1}]}


def test_detection_results_load_with_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    writer = DetectionWriter(tmp_path, CLASSES, score_threshold=0.3, masks=True)
    masks = np.zeros((3, 30, 40), bool)
    masks[0, 5:15, 10:30] = True
    writer.write(image("a.png", 7), Detections(np.array([[10, 5, 30, 15], [0, 0, 40, 30], [1, 1, 2, 2.]]),
                                               np.array([0.9, 0.4, 0.1]), np.array([2, 0, 1]), masks))
    writer.write(image("b.png", 9), Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), np.zeros((0, 30, 40), bool)))
    assert writer.close()["detections"] == 2  # 0.1 is under the threshold
    coco = COCO(str(tmp_path / "images.json"))
    assert sorted(coco.getImgIds()) == [7, 9] and [c["name"] for c in coco.loadCats([1, 2, 3])] == CLASSES
    results = coco.loadRes(str(tmp_path / "predictions.json"))
    first = results.loadAnns(results.getAnnIds(imgIds=[7], catIds=[3]))[0]
    assert first["bbox"] == [10, 5, 20, 10] and first["score"] == 0.9
    assert first["area"] == 200 and results.annToMask(first).sum() == 200  # the RLE decodes to the mask


def test_label_maps_are_indices_or_the_projects_mask_values(tmp_path):
    labels = np.array([[0, 1], [2, 1]], np.uint8)
    LabelMapWriter(tmp_path / "i", CLASSES).write(image("x/a.jpg"), LabelMap(labels))
    LabelMapWriter(tmp_path / "v", CLASSES, [0, 128, 255]).write(image("x/a.jpg"), LabelMap(labels))
    wide = LabelMapWriter(tmp_path / "w", CLASSES, [0, 1000, 2000])
    wide.write(image("x/a.jpg"), LabelMap(labels))
    read = {k: cv2.imread(str(tmp_path / k / "masks" / "x" / "a.png"), cv2.IMREAD_UNCHANGED) for k in "ivw"}
    assert read["i"].tolist() == labels.tolist() and read["v"].tolist() == [[0, 128], [255, 128]]
    assert read["w"].dtype == np.uint16 and read["w"].tolist() == [[0, 1000], [2000, 1000]]
    assert wide.close()["mask_dtype"] == "uint16"


def test_overlays_keep_the_image_size():
    canvas = np.full((30, 40, 3), 100, np.uint8)
    for prediction in (ClassProbabilities(np.array([0.1, 0.9, 0.0])),
                       Detections(np.array([[5, 5, 20, 20.]]), np.array([0.8]), np.array([1]), np.ones((1, 30, 40), bool)),
                       LabelMap(np.ones((30, 40), np.int64))):
        drawn = draw_overlay(canvas, prediction, CLASSES)
        assert drawn.shape == canvas.shape and drawn.dtype == np.uint8 and not np.array_equal(drawn, canvas)


def test_output_folder_replaces_only_an_earlier_prediction(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(AistudioError, match="not an earlier prediction"):
        OutputFolder(tmp_path / "mine")
    out = OutputFolder(tmp_path / "out")
    (out.open() / "summary.json").write_text("{}")
    assert not out.target.exists()  # nothing there until complete
    out.commit()
    again = OutputFolder(tmp_path / "out")
    (again.open() / "new.txt").write_text("y")
    again.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["summary.json"]


# -- model outputs back in the original image ------------------------------------------------------------
def test_detector_outputs_are_scaled_back_and_labels_made_0_based():
    import torch

    from aistudio.evaluation.prediction_model import detections_in_original

    output = {"boxes": torch.tensor([[8.0, 16.0, 32.0, 64.0], [-2.0, 0.0, 70.0, 10.0]]),
              "scores": torch.tensor([0.9, 0.5]), "labels": torch.tensor([1, 3]),
              "masks": torch.zeros(2, 64, 64, dtype=torch.bool)}
    output["masks"][0, :32, :32] = True
    detections = detections_in_original(output, size=(32, 128), input_size=(64, 64))
    assert detections.boxes.tolist() == [[16.0, 8.0, 64.0, 32.0], [0.0, 0.0, 128.0, 5.0]]
    assert detections.labels.tolist() == [0, 2] and detections.masks.shape == (2, 32, 128)
    assert detections.masks[0].sum() == 16 * 64 and detections.masks[0, :16, :64].all()


def test_unreadable_images_travel_beside_the_batch(tmp_path):
    import albumentations as A  # noqa: N812

    from aistudio.evaluation.prediction_model import PredictionDataset, collate_predictions

    good = write_png(tmp_path / "good.png", 20, 30)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    dataset = PredictionDataset([good, tmp_path / "bad.png", tmp_path / "empty.png"],
                                A.Compose([A.Resize(16, 16)]), channels=3)
    images, metas = collate_predictions([dataset[i] for i in range(3)])
    assert tuple(images.shape) == (1, 3, 16, 16)
    assert metas[0]["size"] == (20, 30) and metas[0]["input_size"] == (16, 16) and metas[0]["error"] is None
    assert "cannot decode" in metas[1]["error"] and metas[2]["error"] == "empty image file"
    assert tuple(collate_predictions([dataset[1]])[0].shape) == (0,)


# -- predict.py on real runs -------------------------------------------------------------------------
def trained_images(run_dir: Path) -> list[Path]:
    """The images of the project the run trained on (where it lives depends on AISTUDIO_DATA_DIR)."""
    dataset = Path(json.loads((run_dir / "run.json").read_text())["dataset"]["file"])
    images = sorted((dataset.parent / "images").glob("*.png"))
    assert images, f"no images beside {dataset}"
    return images


def predict(tmp: Path, run_dir: Path, *args: str):
    return run_entry("predict.py", [f"run={run_dir}", *args], tmp, timeout=300)


@pytest.mark.slow
def test_a_corrupt_file_is_reported_and_skipped(tiny_classifier_run):
    tmp, project, run_dir = tiny_classifier_run
    folder = tmp / "new"
    sources = sorted((project / "img").glob("*.png"))[:9]
    for i, source in enumerate(sources):
        target = folder / f"sub{i % 2}" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    (folder / "x.png").write_bytes(b"not an image")
    result = predict(tmp, run_dir, f"input={folder}", "topk=2", "batch_size=4")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "x.png: cannot decode this image" in result.stderr and "Traceback" not in result.stderr
    out = run_dir / "predictions" / "new-best"
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    names = sorted(f"sub{i % 2}/{s.name}" for i, s in enumerate(sources))
    assert sorted(r["file"] for r in rows) == names and set(rows[0]) == {
        "file", "label", "score", "top1_label", "top1_score", "top2_label", "top2_score"}
    assert sorted(p["file"] for p in json.loads((out / "predictions.json").read_text())) == names
    assert {r["label"] for r in rows} <= set(CLASSES)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["predicted"]) == (10, 9)
    assert [f["file"] for f in summary["failed"]] == ["x.png"] and "cannot decode" in summary["failed"][0]["reason"]
    assert summary["timing"]["images_per_s"] > 0 and summary["timing"]["batch_size"] == 4
    assert summary["timing"]["num_workers"] >= 1  # the run's own data.num_workers (auto)
    assert "predicted 9 of 10 images" in result.stdout


@pytest.mark.slow
def test_top1_on_the_test_split_agrees_with_the_recorded_test_accuracy(tiny_classifier_run):
    tmp, project, run_dir = tiny_classifier_run
    result = predict(tmp, run_dir, f"input={project / 'dataset.json'}", "split=test")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((run_dir / "predictions" / "colors-test-best" / "predictions.csv").open()))
    truth = {e["file"]: e["label"] for e in json.loads((project / "dataset.json").read_text())["images"]
             if e["split"][0] == "test"}
    assert sorted(r["file"] for r in rows) == sorted(truth)
    correct = sum(r["label"] == truth[r["file"]] for r in rows)
    test_acc = json.loads((run_dir / "run.json").read_text())["test_metrics"]["test_acc"]
    assert correct == round(test_acc * len(truth))


@pytest.mark.slow
def test_bad_input_is_one_error_and_writes_nothing(tiny_classifier_run, tmp_path):
    tmp, _, run_dir = tiny_classifier_run
    (tmp_path / "empty").mkdir()
    broken_project(tmp_path / "broken")
    before = sorted(p.name for p in (run_dir / "predictions").iterdir()) if (run_dir / "predictions").exists() else []
    for args, message in (([f"input={tmp_path / 'nowhere'}"], "no such file or folder"),
                          ([f"input={tmp_path / 'empty'}"], "no images in"),
                          ([f"input={tmp_path / 'broken'}"], "nothing was predicted"),
                          ([f"input={tmp_path / 'empty'}", "topk=many"], "topk=many: takes an integer")):
        result = predict(tmp, run_dir, *args)
        assert result.returncode == 1 and "\nError: " in result.stderr, result.stderr[-2000:]
        assert message in result.stderr and "Traceback" not in result.stderr and not result.stdout.strip()
    after = sorted(p.name for p in (run_dir / "predictions").iterdir()) if (run_dir / "predictions").exists() else []
    assert after == before


@pytest.mark.slow
def test_an_exported_onnx_file_predicts_what_its_run_predicts(tiny_classifier_run, tmp_path):
    tmp, project, run_dir = tiny_classifier_run
    onnx = run_dir / "export" / "resnet18-best.onnx"
    if not onnx.is_file():  # the export test may have made it already
        assert_onnx_export_matches(run_dir, tmp)
    dataset = f"input={project / 'dataset.json'}"
    result = predict(tmp, run_dir, dataset, "split=test", f"out={tmp_path / 'by-run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    result = predict(tmp, onnx, dataset, "split=test", "data.num_workers=2")  # its config takes overrides too
    assert result.returncode == 0, result.stderr[-3000:]
    out = run_dir / "predictions" / "colors-test-resnet18-best.onnx"  # beside the run it came from
    expected = {r["file"]: r for r in csv.DictReader((tmp_path / "by-run" / "predictions.csv").open())}
    found = {r["file"]: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert set(found) == set(expected) and len(found) == 6
    for name, row in found.items():
        assert row["label"] == expected[name]["label"] and abs(float(row["score"]) - float(expected[name]["score"])) < 1e-3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"] == {"name": "onnx", "path": "export/resnet18-best.onnx"}
    assert summary["timing"]["runtime"].startswith("onnxruntime") and summary["timing"]["num_workers"] == 2
    assert summary["classes"] == list(CLASSES)
    # without its export record, or with a checkpoint choice, the file is refused with the way out
    alone = tmp_path / "alone.onnx"
    shutil.copy(onnx, alone)
    for source, args, message in ((alone, [], "alone.onnx.json is missing or is not an export record"),
                                  (onnx, ["ckpt=last"], "ckpt=last: an exported file holds one set of weights")):
        result = predict(tmp, source, dataset, *args)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("predict-det")
    run_dir = tmp / "run"
    result = run_train(["task=detection", "model=fasterrcnn_mobilenet_v3_large_320_fpn", "hardware=cpu",
                        "data.project.num_images=16", "data.project.image_size=64", "data.image_size=64",
                        "data.batch_size=4", "trainer.max_epochs=1", "data.num_workers=0",
                        "callbacks.progress_bar.kind=none", f"hydra.run.dir={run_dir}"], tmp, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, run_dir


# an eval pipeline that resizes: boxes come back scaled from 64x64 to each image's size
RESIZE_TO_64 = ("data.eval_transform.transforms=[{_target_:albumentations.Resize,height:64,width:64},"
                "{_target_:albumentations.ToFloat,max_value:255},{_target_:albumentations.pytorch.ToTensorV2}]")


def photos(tmp: Path, run_dir: Path) -> Path:
    """Five of the run's images at other sizes than it trained on (made once per module)."""
    folder = tmp / "photos"
    if not folder.is_dir():
        folder.mkdir()
        for i, source in enumerate(trained_images(run_dir)[:5]):
            cv2.imwrite(str(folder / f"{i}.jpg"), cv2.resize(cv2.imread(str(source)), (96 + 8 * i, 72)))
    return folder


@pytest.mark.slow
def test_detections_are_coco_results_in_the_original_image(detector):
    from pycocotools.coco import COCO

    tmp, run_dir = detector
    folder = photos(tmp, run_dir)
    out = tmp / "det-out"
    result = predict(tmp, run_dir, f"input={folder}", f"out={out}", "score_threshold=0", "save_overlays=true",
                     "overlay_threshold=0", RESIZE_TO_64)
    assert result.returncode == 0, result.stderr[-3000:]
    coco = COCO(str(out / "images.json"))
    results = json.loads((out / "predictions.json").read_text())
    assert results, "an untrained detector still proposes boxes at score_threshold=0"
    loaded = coco.loadRes(str(out / "predictions.json"))
    assert len(loaded.getAnnIds()) == len(results) and set(loaded.getImgIds()) == set(range(1, 6))
    sizes = {img["id"]: (img["width"], img["height"]) for img in coco.dataset["images"]}
    assert sizes == {i + 1: (96 + 8 * i, 72) for i in range(5)}
    for r in results:
        x, y, w, h = r["bbox"]
        width, height = sizes[r["image_id"]]
        assert 0 <= x <= x + w <= width + 0.01 and 0 <= y <= y + h <= height + 0.01 and 1 <= r["category_id"] <= 3
    assert max(r["bbox"][0] + r["bbox"][2] for r in results) > 64  # scaled out of the 64x64 model frame
    for i in range(5):
        overlay = cv2.imread(str(out / "overlays" / f"{i}.jpg"))
        assert overlay is not None and overlay.shape == (72, 96 + 8 * i, 3)


@pytest.mark.slow
def test_an_exported_detector_predicts_the_same_boxes_as_its_run(detector):
    tmp, run_dir = detector
    folder = photos(tmp, run_dir)
    record = assert_onnx_export_matches(run_dir, tmp)  # one image of any size in
    common = [f"input={folder}", "score_threshold=0.05", RESIZE_TO_64]
    by_run, by_file = tmp / "det-run", tmp / "det-onnx"
    for source, out in ((run_dir, by_run), (run_dir / "export" / record["file"], by_file)):
        result = predict(tmp, source, f"out={out}", *common)
        assert result.returncode == 0, result.stderr[-3000:]
    expected = json.loads((by_run / "predictions.json").read_text())
    found = json.loads((by_file / "predictions.json").read_text())
    assert expected and abs(len(found) - len(expected)) <= 1  # a score at the threshold may fall either side
    for r in found:  # each detection of the file is one of the run's: same image and class, box within 0.5 px
        assert any(e["image_id"] == r["image_id"] and e["category_id"] == r["category_id"]
                   and np.abs(np.subtract(e["bbox"], r["bbox"])).max() < 0.5 and abs(e["score"] - r["score"]) < 0.01
                   for e in expected) or r["score"] < 0.06, r
    summary = json.loads((by_file / "summary.json").read_text())
    assert summary["timing"]["runtime"].startswith("onnxruntime") and summary["checkpoint"]["name"] == "onnx"


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("predict-sem")
    run_dir = tmp / "run"
    result = run_train(["task=semantic_segmentation", "data.project.num_images=16", "data.project.image_size=64",
                        "data.image_size=64", "trainer.max_epochs=1", "hardware=cpu", "data.num_workers=0",
                        "callbacks.progress_bar.kind=none", f"hydra.run.dir={run_dir}"], tmp, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, run_dir


@pytest.mark.slow
def test_label_maps_have_the_original_size_and_class_values(segmenter):
    tmp, run_dir = segmenter
    shapes = trained_images(run_dir)[:3]
    folder = tmp / "scans"
    for i, source in enumerate(shapes):
        (folder / "deep").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / "deep" / f"{i}.png"), cv2.resize(cv2.imread(str(source)), (80 + 16 * i, 48)))
    result = predict(tmp, run_dir, f"input={folder}", "save_overlays=true", "mask_format=values")
    assert result.returncode == 0, result.stderr[-3000:]
    out = run_dir / "predictions" / "scans-best"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted"] == 3 and summary["outputs"]["masks"] == 3 and summary["task"] == "semantic_segmentation"
    assert summary["outputs"]["mask_values"] == list(range(len(summary["classes"])))  # shapes: no mask_values
    for i in range(3):
        mask = cv2.imread(str(out / "masks" / "deep" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (48, 80 + 16 * i) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= set(range(len(summary["classes"])))
        overlay = cv2.imread(str(out / "overlays" / "deep" / f"{i}.jpg"))
        assert overlay is not None and overlay.shape == (48, 80 + 16 * i, 3)
