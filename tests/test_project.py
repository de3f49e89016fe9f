"""dataset.json validation (every kind of bad input), splits, importers and the built-in digits."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from aistudio import AistudioError
from aistudio.data import project as project_module
from aistudio.data.annotation_parsers import AnnotationParser, ClassLabels, ObjectAnnotations, SemanticMasks
from aistudio.data.builtin import digits_project
from aistudio.data.importers import import_image_folder
from aistudio.data.project import DatasetError, load_project, project_from_config
from aistudio.data.splits import stratified_holdout, stratified_kfold
from tests.helpers import edit_dataset, make_color_project


def problems_of(path, **kwargs) -> list[str]:
    with pytest.raises(DatasetError) as info:
        load_project(path, **kwargs)
    assert str(path) in str(info.value) or "dataset.json" in str(info.value)
    return info.value.problems


def test_valid_project_loads_with_chosen_split(color_project):
    project = load_project(color_project)
    assert project.classes == ["red", "green", "blue"]
    assert [len(project.split(s)) for s in ("train", "val", "test")] == [24, 6, 6]
    assert project.class_counts("train") == [8, 8, 8]
    second = load_project(color_project, split_index=1)
    assert {r.file for r in second.split("val")} != {r.file for r in project.split("val")}


def test_missing_folder_and_missing_file(tmp_path):
    assert "dataset folder not found" in problems_of(tmp_path / "nowhere")[0]
    assert "no dataset.json" in problems_of(tmp_path)[0]


def test_not_json_names_line_and_column(tmp_path):
    (tmp_path / "dataset.json").write_text('{"classes": ["a"],\n "images": [}')
    (problem,) = problems_of(tmp_path)
    assert "not valid JSON" in problem and "line 2" in problem


def test_missing_image_is_reported_with_entry_and_fix(color_project):
    (color_project / "img" / "red_03.png").unlink()
    (problem,) = problems_of(color_project)
    assert "images[3] (img/red_03.png)" in problem and "not found" in problem and "fix 'file'" in problem


def test_unreadable_image(color_project):
    (color_project / "img" / "green_00.png").write_bytes(b"this is not a png")
    (problem,) = problems_of(color_project)
    assert "images[12] (img/green_00.png)" in problem and "unreadable image" in problem


def test_truncated_image_caught_by_full_check(color_project):
    path = color_project / "img" / "blue_01.png"
    path.write_bytes(path.read_bytes()[:60])
    problems = problems_of(color_project, check_images="full")
    assert any("img/blue_01.png" in p and "unreadable" in p for p in problems)


def test_unknown_class(color_project):
    edit_dataset(color_project, lambda d: d["images"][5].update(label="purple"))
    (problem,) = problems_of(color_project)
    assert "images[5]" in problem and "'purple' is not one of the 3 classes" in problem


def test_bad_split_value(color_project):
    edit_dataset(color_project, lambda d: d["images"][0].update(split=["training", "val"]))
    (problem,) = problems_of(color_project)
    assert "images[0]" in problem and "['training']" in problem and "train" in problem


def test_split_index_out_of_range_reports_valid_range(color_project):
    problems = problems_of(color_project, split_index=2)
    assert len(problems) == 36  # every entry, all at once
    assert "data.split_index=2 is out of range" in problems[0] and "0..1" in problems[0]


def test_empty_val_split(color_project):
    edit_dataset(color_project, lambda d: [img.update(split=["train" if s[0] == "val" else s[0]])
                                           for img in d["images"] for s in [img["split"]]])
    (problem,) = problems_of(color_project)
    assert "'val' split empty" in problem


def test_declared_size_must_match_file(color_project):
    edit_dataset(color_project, lambda d: d["images"][1].update(width=64))
    (problem,) = problems_of(color_project)
    assert "declared size 64x16 but the file is 16x16" in problem


def test_all_problems_reported_at_once(color_project):
    def break_many(data):
        data["images"][0]["label"] = "nope"
        data["images"][1]["split"] = ["bogus"]
        data["images"][2]["file"] = "img/missing.png"
        del data["images"][3]["label"]
    edit_dataset(color_project, break_many)
    problems = problems_of(color_project)
    assert len(problems) == 4
    assert [p.split(" ")[0] for p in problems] == ["images[0]", "images[1]", "images[3]", "images[2]"]


def test_duplicate_classes_and_missing_images_list(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["a", "a"]}))
    problems = problems_of(tmp_path)
    assert any("more than once" in p for p in problems) and any("'images'" in p for p in problems)


def test_stratified_holdout_keeps_class_proportions():
    labels = [i % 4 for i in range(400)]
    split = stratified_holdout(labels, 0.2, 0.1, seed=3)
    counts = Counter((label, s) for label, s in zip(labels, split))
    for label in range(4):
        assert (counts[(label, "train")], counts[(label, "val")], counts[(label, "test")]) == (70, 20, 10)
    assert split == stratified_holdout(labels, 0.2, 0.1, seed=3)
    assert split != stratified_holdout(labels, 0.2, 0.1, seed=4)


def test_kfold_schemes_partition_train_val_and_keep_test():
    labels = [i % 3 for i in range(90)]
    fixed = stratified_holdout(labels, 0.0, 0.2, seed=0)
    schemes = stratified_kfold(labels, 3, seed=0, fixed=fixed)
    for i in range(90):
        column = [scheme[i] for scheme in schemes]
        if fixed[i] == "test":
            assert column == ["test"] * 3
        else:
            assert column.count("val") == 1  # each sample is validated exactly once


def test_image_folder_importer(tmp_path):
    source = make_color_project(tmp_path / "src", per_class=10)
    for name in ("red", "green", "blue"):
        (source / name).mkdir()
        for image in (source / "img").glob(f"{name}_*.png"):
            image.rename(source / name / image.name)
    out = tmp_path / "project"
    written = import_image_folder(source, out, val_fraction=0.2, test_fraction=0.2, folds=3, seed=1)
    project = load_project(written.parent, split_index=0)
    assert project.classes == ["blue", "green", "red"]
    assert [len(project.split(s)) for s in ("train", "val", "test")] == [18, 6, 6]
    assert len(json.loads(written.read_text())["split_schemes"]) == 4
    assert len(load_project(out, split_index=3).split("test")) == 6


def test_digits_materialised_once_as_a_project(data_dir):
    path = digits_project(data_dir)
    project = load_project(path)
    assert project.num_classes == 10 and len(project.images) == 1797
    sizes = [len(project.split(s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 1797 and sizes[1] > 250 and sizes[2] > 250
    stamp = (data_dir / "digits" / "dataset.json").stat().st_mtime_ns
    assert digits_project(data_dir) == path
    assert (data_dir / "digits" / "dataset.json").stat().st_mtime_ns == stamp
    assert len(load_project(path, split_index=5).split("val")) > 200


def _as_jpeg(project, name: str):
    """Re-encode one PNG of the colour project as JPEG and point its entry at it."""
    import cv2

    png = project / "img" / name
    jpeg = png.with_suffix(".jpg")
    cv2.imwrite(str(jpeg), cv2.imread(str(png)))
    png.unlink()
    edit_dataset(project, lambda d: [e.update(file=e["file"].replace(name, jpeg.name)) for e in d["images"]])
    return jpeg


def test_motion_photo_jpeg_passes_full_check_and_decodes_for_training(color_project):
    """A phone's motion photo: a complete JPEG followed by a video. Viewers, validate and training
    all read the JPEG; the old last-64-bytes heuristic rejected it in training only."""
    from aistudio.data.images import read_image

    jpeg = _as_jpeg(color_project, "red_00.png")
    jpeg.write_bytes(jpeg.read_bytes() + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    load_project(color_project, check_images="full")
    image = read_image(jpeg)
    assert image.shape == (16, 16, 3) and image[..., 0].mean() > 140  # still the red image


def test_truncated_jpeg_fails_full_check_and_training_decode_alike(color_project):
    from aistudio.data.images import ImageReadError, read_image

    jpeg = _as_jpeg(color_project, "red_00.png")
    jpeg.write_bytes(jpeg.read_bytes()[:-60])  # the scan data is cut; the header is intact
    load_project(color_project)  # the header check cannot see it
    problems = problems_of(color_project, check_images="full")
    assert len(problems) == 1 and "red_00.jpg" in problems[0] and "truncated" in problems[0], problems
    with pytest.raises(ImageReadError, match=r"red_00.jpg: cannot decode this image \(truncated"):
        read_image(jpeg)


class CaptionedLabels(AnnotationParser):
    """A task of our own: the class is under ``key`` and each image's caption is kept for its dataset."""

    def __init__(self, key: str = "category"):
        self.key = key

    def parse(self, where, entry, classes, fail):
        name = entry.get(self.key)
        if name not in classes:
            fail(f"{where}: {self.key} {name!r} is not a class")
            return None
        return {"label": classes.index(name), "extra": {"caption": entry.get("caption", "")}}


def _captioned(color_project):
    def rename(data):
        for image in data["images"]:
            image["category"] = image.pop("label")
            image["caption"] = f"mostly {image['category']}"
    edit_dataset(color_project, rename)


def test_a_tasks_annotation_parser_comes_from_its_config(color_project, tmp_path, monkeypatch):
    """A task = its config naming its parser: by object, through a data config, and as a new conf/task file."""
    _captioned(color_project)
    with pytest.raises(DatasetError, match="'label' is missing"):
        load_project(color_project)  # classification's parser reads 'label'
    project = load_project(color_project, task=CaptionedLabels())
    assert project.class_counts("train") == [8, 8, 8] and project.images[0].extra == {"caption": "mostly red"}

    node = {"_target_": f"{__name__}.CaptionedLabels", "key": "category"}
    project = project_from_config({"project": str(color_project), "task": "classification", "annotations": node})
    assert project.images[-1].extra["caption"] == "mostly blue"  # data.annotations wins over data.task
    edit_dataset(color_project, lambda d: d["images"][4].update(category="purple"))
    with pytest.raises(DatasetError) as info:
        project_from_config({"project": str(color_project), "annotations": node})
    assert info.value.problems == ["images[4] (img/red_04.png): category 'purple' is not a class"]

    # a new task is a file in conf/task/ naming its parser; load_project(task=<name>) reads it from there
    tasks = tmp_path / "task"
    tasks.mkdir()
    (tasks / "captioning.yaml").write_text(f"name: captioning\nannotations:\n  _target_: {__name__}.CaptionedLabels\n")
    monkeypatch.setattr(project_module, "TASK_CONFIGS", tasks)
    project_module._task_parser.cache_clear()
    try:
        assert project_module.known_tasks() == ["captioning"]
        with pytest.raises(DatasetError, match="category 'purple' is not a class"):
            load_project(color_project, task="captioning")
    finally:
        project_module._task_parser.cache_clear()


def test_the_shipped_task_configs_name_their_parsers(compose_cfg):
    from hydra.utils import instantiate

    assert project_module.known_tasks() == ["classification", "detection", "instance_segmentation",
                                            "semantic_segmentation"]
    parsers = {name: project_module.annotation_parser(name) for name in project_module.known_tasks()}
    assert [type(p) for p in parsers.values()] == [ClassLabels, ObjectAnnotations, ObjectAnnotations, SemanticMasks]
    assert not parsers["detection"].masks and parsers["instance_segmentation"].masks
    cfg = compose_cfg("task=instance_segmentation")
    assert cfg.data.annotations == cfg.task.annotations  # the data config passes the task's parser on
    assert vars(instantiate(cfg.data.annotations)) == {"masks": True}


def test_an_unknown_task_names_the_known_ones(color_project):
    with pytest.raises(AistudioError) as info:
        load_project(color_project, task="keypoints")
    assert str(info.value) == ("task 'keypoints' is not one of classification, detection, "
                               "instance_segmentation, semantic_segmentation")
