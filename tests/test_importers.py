"""Importers (VOC, COCO, mask folders) and the validation of object/mask annotations."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from aistudio import AistudioError
from aistudio.data.importers import import_coco, import_mask_folder, import_voc
from aistudio.data.project import DatasetError, load_project
from tests.helpers import SHARED_DATA, edit_dataset

BCCD = SHARED_DATA / "bccd"
MEMBRANE = SHARED_DATA / "membrane"


def write_image(path: Path, width: int = 40, height: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 120, np.uint8))


def make_voc(root: Path) -> Path:
    boxes = {"a": [("cat", 2, 3, 12, 20), ("dog", 5, 5, 5, 9)],  # the second box is degenerate (xmax == xmin)
             "b": [("dog", 0, 0, 40, 30)], "c": [("cat", 10, 10, 20, 20)]}
    for stem, objects in boxes.items():
        write_image(root / "JPEGImages" / f"{stem}.jpg")
        xml = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                      f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for n, x0, y0, x1, y1 in objects)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>40</width><height>30</height></size>{xml}"
            "</annotation>")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nc\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\n")
    return root


def test_voc_boxes_splits_and_degenerate_box_reported_and_dropped(tmp_path):
    written = import_voc(make_voc(tmp_path / "voc"), tmp_path / "project")
    data = json.loads(written.read_text())
    assert data["classes"] == ["cat", "dog"] and data["split_schemes"] == ["voc-imagesets"]
    assert data["images"][0]["objects"][0]["bbox"] == [2.0, 3.0, 10.0, 17.0]  # corners -> x, y, w, h
    project = load_project(written.parent, task="detection")
    assert [r.split for r in project.images] == ["train", "val", "train"]
    (warning,) = project.warnings
    assert "images[0]" in warning and "objects[1]" in warning and "degenerate box" in warning
    assert [len(r.objects) for r in project.images] == [1, 1, 1]
    assert project.images[1].objects[0].bbox == (0.0, 0.0, 40.0, 30.0)


@pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd (real BCCD photos) is not present")
def test_real_bccd_imports_with_its_two_degenerate_boxes(tmp_path):
    written = import_voc(BCCD, tmp_path / "bccd")
    project = load_project(written.parent, task="detection")
    assert project.classes == ["Platelets", "RBC", "WBC"] and len(project.images) == 364
    assert [len(project.split(s)) for s in ("train", "val", "test")] == [205, 87, 72]
    assert len(project.warnings) == 2
    assert "BloodImage_00338" in project.warnings[0] and "BloodImage_00343" in project.warnings[1]
    assert sum(len(r.objects) for r in project.images) == 4888 - 2


def coco_file(path: Path, images: list[dict], annotations: list[dict]) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}]}))
    return path


def test_coco_polygons_rle_and_per_split_files(tmp_path):
    for name in ("x.png", "y.png"):
        write_image(tmp_path / "images" / name)
    rle = {"size": [30, 40], "counts": [100, 20, 1080]}
    train = coco_file(tmp_path / "train.json", [{"id": 7, "file_name": "x.png", "width": 40, "height": 30}],
                      [{"image_id": 7, "category_id": 3, "bbox": [1, 2, 10, 8],
                        "segmentation": [[1, 2, 11, 2, 11, 10, 1, 10]], "iscrowd": 0},
                       {"image_id": 7, "category_id": 1, "bbox": [3, 3, 5, 5], "segmentation": rle, "iscrowd": 1}])
    val = coco_file(tmp_path / "val.json", [{"id": 1, "file_name": "y.png", "width": 40, "height": 30}],
                    [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "segmentation": [[0, 0, 4, 0, 4, 4]]}])
    written = import_coco({"train": train, "val": val}, tmp_path / "images", tmp_path / "project")
    project = load_project(written.parent, task="instance_segmentation")
    assert project.classes == ["circle", "square"]
    first = project.images[0]
    assert first.split == "train" and [o.category for o in first.objects] == [1, 0]
    assert first.objects[1].iscrowd and first.objects[1].segmentation == rle
    assert project.images[1].split == "val"

    edit_dataset(written.parent, lambda d: d["images"][0]["objects"][1]["segmentation"].update(size=[31, 40]))
    with pytest.raises(DatasetError, match=r"RLE size \[31, 40\] differs"):
        load_project(written.parent, task="instance_segmentation")


def test_coco_single_file_is_split_and_bad_split_names_refused(tmp_path):
    names = [f"{i}.png" for i in range(20)]
    for name in names:
        write_image(tmp_path / "images" / name)
    everything = coco_file(tmp_path / "all.json",
                           [{"id": i, "file_name": n, "width": 40, "height": 30} for i, n in enumerate(names)],
                           [{"image_id": i, "category_id": 1 + 2 * (i % 2), "bbox": [1, 1, 5, 5]} for i in range(20)])
    written = import_coco({"all": everything}, tmp_path / "images", tmp_path / "project", val_fraction=0.2,
                          test_fraction=0.2)
    project = load_project(written.parent, task="detection")
    assert [len(project.split(s)) for s in ("train", "val", "test")] == [12, 4, 4]
    with pytest.raises(AistudioError, match="per split"):
        import_coco({"training": everything}, tmp_path / "images", tmp_path / "p2")


def make_mask_pairs(root: Path, count: int = 8) -> tuple[Path, Path]:
    for i in range(count):
        write_image(root / "images" / f"{i}.png")
        label = np.zeros((30, 40), np.uint8)
        label[2:8, 3:10] = 255  # two separate blobs of the foreground value
        label[15:25, 20:35] = 255
        (root / "labels").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "labels" / f"{i}.png"), label)
    return root / "images", root / "labels"


def test_mask_folder_semantic_and_connected_component_instances(tmp_path):
    images, labels = make_mask_pairs(tmp_path / "src")
    written = import_mask_folder(images, labels, tmp_path / "project", classes=["background", "blob"],
                                 mask_values=[0, 255], instances=True, val_fraction=0.25, test_fraction=0.25)
    project = load_project(written.parent, task="semantic_segmentation")
    assert project.mask_values == [0, 255] and project.ignore_index == 255
    assert [len(project.split(s)) for s in ("train", "val", "test")] == [4, 2, 2]
    instances = load_project(written.parent, task="instance_segmentation")
    boxes = sorted(o.bbox for o in instances.images[0].objects)
    assert boxes == [(3.0, 2.0, 7.0, 6.0), (20.0, 15.0, 15.0, 10.0)]
    assert all(o.category == 1 for o in instances.images[0].objects)


def test_mask_problems_are_reported(tmp_path):
    images, labels = make_mask_pairs(tmp_path / "src", count=6)
    written = import_mask_folder(images, labels, tmp_path / "project", mask_values=[0, 255])
    cv2.imwrite(str(labels / "1.png"), np.zeros((10, 10), np.uint8))
    (labels / "2.png").write_bytes(b"not a png")
    (labels / "3.png").unlink()
    with pytest.raises(DatasetError) as info:
        load_project(written.parent, task="semantic_segmentation")
    problems = "\n".join(info.value.problems)
    assert "mask 1.png is 10x10 but the image is 40x30" in problems
    assert "unreadable mask 2.png" in problems and "mask file not found" in problems and "3.png" in problems
    (tmp_path / "no_labels").mkdir()
    with pytest.raises(AistudioError, match="no label image for 6 image"):
        import_mask_folder(images, tmp_path / "no_labels", tmp_path / "p2")


@pytest.mark.skipif(not MEMBRANE.is_dir(), reason="../shared/data/membrane (ISBI slices) is not present")
def test_real_membrane_slices_import(tmp_path):
    written = import_mask_folder(MEMBRANE / "image", MEMBRANE / "label", tmp_path / "membrane",
                                 classes=["membrane", "cell"], mask_values=[0, 255])
    project = load_project(written.parent, task="semantic_segmentation", check_images="full")
    assert len(project.images) == 30 and project.classes == ["membrane", "cell"]


def detection_project(tmp_path: Path, objects: list[dict], task: str = "detection") -> Path:
    write_image(tmp_path / "p" / "a.png")
    write_image(tmp_path / "p" / "b.png")
    (tmp_path / "p" / "dataset.json").write_text(json.dumps({
        "classes": ["cat", "dog"],
        "images": [{"file": "a.png", "objects": objects, "split": ["train"]},
                   {"file": "b.png", "objects": [], "split": ["val"]}]}))
    return tmp_path / "p"


@pytest.mark.parametrize(("objects", "message"), [
    ([{"class": "cow", "bbox": [1, 1, 5, 5]}], "class 'cow' is not one of the 2 classes"),
    ([{"class": "cat", "bbox": [1, 1, 5]}], "'bbox' must be [x, y, width, height]"),
    ([{"class": "cat", "bbox": [30, 20, 15, 5]}], "extends outside the 40x30 image"),
    ([{"class": "cat", "bbox": [-5, 0, 10, 10]}], "extends outside the 40x30 image"),
    ("cat", "'objects' must be a list"),
])
def test_object_problems_name_image_and_object(tmp_path, objects, message):
    with pytest.raises(DatasetError) as info:
        load_project(detection_project(tmp_path, objects), task="detection")
    (problem,) = info.value.problems
    assert problem.startswith("images[0] (a.png)") and message in problem


def test_small_overshoot_is_clipped_and_missing_masks_or_segmentation_reported(tmp_path):
    path = detection_project(tmp_path, [{"class": "dog", "bbox": [30.5, 20, 10.2, 10.8]}])
    (obj,) = load_project(path, task="detection").images[0].objects
    assert obj.bbox == pytest.approx((30.5, 20.0, 9.5, 10.0))
    with pytest.raises(DatasetError, match="'segmentation' .* is missing"):
        load_project(path, task="instance_segmentation")
    with pytest.raises(DatasetError, match="'mask' .* is missing"):
        load_project(path, task="semantic_segmentation")


def test_coco_on_a_tiny_set_fills_every_split_and_drops_the_unannotated_background(tmp_path, capsys):
    from aistudio.cli.main import main

    names = [f"{i}.png" for i in range(3)]
    for name in names:
        write_image(tmp_path / "images" / name)
    everything = tmp_path / "all.json"
    everything.write_text(json.dumps({  # labelme's export: a `_background_` category (id 0) nothing uses
        "images": [{"id": i, "file_name": n, "width": 40, "height": 30} for i, n in enumerate(names)],
        "annotations": [{"image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5],
                         "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]} for i in range(3)],
        "categories": [{"id": 0, "name": "_background_"}, {"id": 1, "name": "circle"}]}))
    # 0.15 of 3 images rounds to none: one image goes to each requested split instead
    assert main(["import", "coco", str(everything), "--images", str(tmp_path / "images"),
                 "--out", str(tmp_path / "project")]) == 0
    printed = capsys.readouterr().out
    assert "task=instance_segmentation" in printed  # polygons: the next step names the task they are for
    project = load_project(tmp_path / "project", task="instance_segmentation")
    assert project.classes == ["circle"]
    assert [len(project.split(s)) for s in ("train", "val", "test")] == [1, 1, 1]

    # two images cannot make three splits: one clear error with the fix, nothing written
    with pytest.raises(AistudioError, match=r"--test 0"):
        import_coco({"all": coco_file(tmp_path / "two.json",
                                      [{"id": i, "file_name": n, "width": 40, "height": 30}
                                       for i, n in enumerate(names[:2])],
                                      [{"image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in range(2)])},
                    tmp_path / "images", tmp_path / "p2")
    assert not (tmp_path / "p2" / "dataset.json").exists()


@pytest.mark.parametrize("lists", ["imagesets", "csv"])
def test_voc_without_val_list_keeps_the_official_test_images_in_test_and_takes_other_folder_names(tmp_path, capsys,
                                                                                                  lists):
    from aistudio.cli.main import main

    root = tmp_path / "set"  # a public set's layout: annotations/ + images/, train and test lists only
    stems = [f"img{i:02d}" for i in range(20)]
    for n, stem in enumerate(stems):
        write_image(root / "images" / f"{stem}.jpg")
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>40</width><height>30</height></size>"
            f"<object><name>{'cat' if n % 2 else 'dog'}</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>12</xmax>"
            "<ymax>12</ymax></bndbox></object></annotation>")
    if lists == "imagesets":
        (root / "ImageSets" / "Main").mkdir(parents=True)
        (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(stems[:14]))
        (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(stems[14:]))
    else:  # Kaggle/Roboflow style: one CSV row per box, so an image with two boxes is listed twice
        header = "filename,width,height,class,xmin,ymin,xmax,ymax\n"
        for split, chosen in (("train", stems[:14]), ("test", stems[14:])):
            rows = [f"{stem}.jpg,40,30,cat,2,2,12,12\n" * 2 for stem in chosen]
            (root / f"{split}_labels.csv").write_text(header + "".join(rows))
    assert main(["import", "voc", str(root), "--annotations", str(root / "annotations"),
                 "--images", str(root / "images"), "--out", str(tmp_path / "project")]) == 0
    project = load_project(tmp_path / "project", task="detection")
    split_of = {record.file.stem: record.split for record in project.images}
    assert all(split_of[stem] == "test" for stem in stems[14:])  # every official test image stays test
    assert {split_of[stem] for stem in stems[:14]} == {"train", "val"}  # val carved from the train list only
    assert 1 <= sum(split_of[stem] == "val" for stem in stems[:14]) <= 4
    assert json.loads((tmp_path / "project" / "dataset.json").read_text())["split_schemes"] == \
        [f"{'voc-imagesets' if lists == 'imagesets' else 'csv-lists'}+holdout-seed0"]

    # without the folder options, the error says how to name them
    with pytest.raises(AistudioError, match="--annotations DIR --images DIR"):
        import_voc(root, tmp_path / "p2")
