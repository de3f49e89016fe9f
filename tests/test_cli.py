"""The ``aistudio`` command: import an image folder, validate a project."""

from __future__ import annotations

import json

from aistudio.cli.main import main
from tests.helpers import edit_dataset, make_color_project


def test_import_then_validate(tmp_path, capsys):
    source = make_color_project(tmp_path / "src", per_class=8)
    for name in ("red", "green", "blue"):
        (source / name).mkdir()
        for image in (source / "img").glob(f"{name}_*.png"):
            image.rename(source / name / image.name)
    (source / "dataset.json").unlink()
    assert main(["import", "image-folder", str(source), "--folds", "2"]) == 0
    assert "data.project=" in capsys.readouterr().out
    data = json.loads((source / "dataset.json").read_text())
    assert len(data["images"]) == 24 and len(data["images"][0]["split"]) == 3
    assert main(["validate", str(source), "--split-index", "2"]) == 0
    assert "OK" in capsys.readouterr().out


def test_validate_reports_problems_without_traceback(tmp_path, capsys):
    project = make_color_project(tmp_path / "p")
    edit_dataset(project, lambda d: d["images"][0].update(label="nope"))
    assert main(["validate", str(project)]) == 1
    err = capsys.readouterr().err
    assert "images[0] (img/red_00.png)" in err and "Traceback" not in err


def test_import_rejects_a_folder_without_classes(tmp_path, capsys):
    (tmp_path / "only").mkdir()
    assert main(["import", "image-folder", str(tmp_path)]) == 1
    assert "at least two classes" in capsys.readouterr().err


def test_resume_is_refused_while_the_run_is_alive_or_completed(tmp_path):
    import os
    import socket

    import pytest

    from aistudio import AistudioError
    from aistudio.runs.resume import resume_checkpoint

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    record = {"status": "running", "pid": os.getpid(), "host": socket.gethostname()}
    (run_dir / "run.json").write_text(json.dumps(record))
    with pytest.raises(AistudioError, match="still going"):
        resume_checkpoint(run_dir, str(run_dir), None)
    (run_dir / "run.json").write_text(json.dumps({**record, "pid": 2**22 + 7}))  # a pid that is not running
    assert resume_checkpoint(run_dir, str(run_dir), None) == run_dir / "checkpoints" / "last.ckpt"
    (run_dir / "run.json").write_text(json.dumps({**record, "status": "completed"}))
    with pytest.raises(AistudioError, match="already completed"):
        resume_checkpoint(run_dir, str(run_dir), None)


def test_import_voc_and_masks_commands(tmp_path, capsys):
    from tests.test_importers import make_mask_pairs, make_voc

    voc = make_voc(tmp_path / "voc")
    assert main(["import", "voc", str(voc)]) == 0
    assert main(["validate", str(voc), "--task", "detection"]) == 0
    out = capsys.readouterr().out
    assert "warning: images[0] (JPEGImages/a.jpg) objects[1]: degenerate box" in out and "1 warning(s)" in out
    images, labels = make_mask_pairs(tmp_path / "seg")
    assert main(["import", "masks", str(images), str(labels), "--classes", "bg,blob", "--values", "0,255",
                 "--instances"]) == 0
    assert main(["validate", str(tmp_path / "seg"), "--task", "instance_segmentation"]) == 0
    assert "2 classes, 8 images" in capsys.readouterr().out


def test_runs_root_flag_in_either_position_json_best_and_a_missing_root(tmp_path, capsys):
    from aistudio.runs.record import RunRecord

    record = RunRecord.create(tmp_path / "runs" / "one")
    record.mark_running()
    record.update(best={"metric": "val_acc", "mode": "max", "value": 0.5, "epoch": 3})
    record.mark_completed()
    for argv in (["runs", "--root", str(tmp_path / "runs"), "list", "--json"],
                 ["runs", "list", "--root", str(tmp_path / "runs"), "--json"]):
        assert main(argv) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [(r["id"], r["status"]) for r in rows] == [(record.data["id"], "completed")]
        assert rows[0]["best"] == {"metric": "val_acc", "mode": "max", "value": 0.5, "epoch": 3}
    assert main(["runs", "list", "--root", str(tmp_path / "runs")]) == 0
    assert "val_acc=0.5 (ep 3)" in capsys.readouterr().out  # the table keeps the short form

    # a folder that does not exist is an error naming it and how to choose another, not "no runs"
    assert main(["runs", "list", "--root", str(tmp_path / "elsewhere")]) == 1
    error = capsys.readouterr().err
    assert str(tmp_path / "elsewhere") in error and "--root" in error
    (tmp_path / "empty").mkdir()
    assert main(["runs", "list", "--root", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    assert f"no runs under {tmp_path / 'empty'}" in out and "--root DIR" in out  # which folder, how to choose


def test_help_texts_show_no_rst_markup(capsys):
    import pytest

    for argv in ([], ["runs"], ["runs", "list"], ["import"], ["import", "coco"], ["validate"]):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        text = capsys.readouterr().out
        assert text.startswith("usage: aistudio") and "``" not in text, text


def test_validate_infers_the_task_from_the_annotations_and_lists_every_problem(tmp_path, capsys):
    from aistudio.data.builtin import shapes_project

    semantic = shapes_project(tmp_path, task="semantic_segmentation", num_images=12, image_size=32)
    objects = str(tmp_path / "shapes-32-12-0" / "dataset.json")
    assert main(["validate", objects]) == 0
    assert "task: instance_segmentation" in capsys.readouterr().out  # polygons: instance masks
    boxes_only = tmp_path / "boxes"
    boxes_only.mkdir()
    data = json.loads(open(objects).read())
    for image in data["images"]:
        image["file"] = str((tmp_path / "shapes-32-12-0" / image["file"]).resolve())
        for obj in image.get("objects") or []:
            obj.pop("segmentation", None)
    (boxes_only / "dataset.json").write_text(json.dumps(data))
    assert main(["validate", str(boxes_only)]) == 0
    assert "task: detection" in capsys.readouterr().out
    assert main(["validate", semantic]) == 0
    assert "task: semantic_segmentation" in capsys.readouterr().out
    assert main(["validate", str(boxes_only), "--task", "detection"]) == 0
    assert "task:" not in capsys.readouterr().out  # chosen, not inferred

    # every problem is printed (a training run's message stops at 30)
    project = make_color_project(tmp_path / "p")
    edit_dataset(project, lambda d: [image.update(label="nope") for image in d["images"]])
    assert main(["validate", str(project)]) == 1
    err = capsys.readouterr().err
    assert "36 problem(s)" in err and err.count("  - ") == 36 and "run log" not in err
