"""docs/extending.md stays true: its multi-label task, copied out of the page as a user would, trains.

The guide claims a task is its module, its config and its annotation parser, with no edit to aistudio:
this test writes the page's ``mylab/multilabel.py`` and ``mylab_conf/task/multilabel.yaml`` blocks into a
temporary folder and runs train.py with them (DataLoader workers on, the default callbacks and logger).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aistudio.data.project import DatasetError, load_project
from tests.helpers import ROOT, edit_dataset, make_color_project, subprocess_env

GUIDE = ROOT / "docs" / "extending.md"


def guide_files() -> dict[str, str]:
    """Every fenced code block of the guide whose first line is a ``# <relative path>`` comment."""
    blocks = re.findall(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    return {path: body for path, body in blocks}


def write_guide_task(root: Path) -> Path:
    files = guide_files()
    for relative in ("mylab/multilabel.py", "mylab_conf/task/multilabel.yaml"):
        assert relative in files, f"{GUIDE} has no block for {relative}"
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(files[relative])
    (root / "mylab" / "__init__.py").write_text("")
    return root


def multilabel_project(root: Path) -> Path:
    """The colour project with a ``labels`` list per image (its colour, and every third one a second)."""
    make_color_project(root, per_class=10)

    def to_labels(data: dict) -> None:
        for i, image in enumerate(data["images"]):
            extra = [data["classes"][(data["classes"].index(image["label"]) + 1) % 3]] if i % 3 == 0 else []
            image["labels"] = [image.pop("label"), *extra]
    edit_dataset(root, to_labels)
    return root


def test_the_guides_parser_reads_labels_and_reports_a_bad_entry(tmp_path):
    code = write_guide_task(tmp_path / "ext")
    spec = importlib.util.spec_from_file_location("guide_multilabel", code / "mylab" / "multilabel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    project_dir = multilabel_project(tmp_path / "project")
    project = load_project(project_dir, task=module.MultiLabels())
    assert project.images[0].extra["labels"] == [0, 1] and project.images[1].extra["labels"] == [0]

    edit_dataset(project_dir, lambda data: data["images"][2].update(labels=["red", "purple"]))
    with pytest.raises(DatasetError, match=r"images\[2\].*'labels' must be a list of names from 'classes'"):
        load_project(project_dir, task=module.MultiLabels())


@pytest.mark.slow
def test_the_guides_multilabel_task_trains_without_editing_aistudio(tmp_path):
    code = write_guide_task(tmp_path / "ext")
    project = multilabel_project(tmp_path / "project")
    env = {**subprocess_env(tmp_path), "PYTHONPATH": str(code)}
    args = [f"hydra.searchpath=[file://{code / 'mylab_conf'}]", "task=multilabel", "data=project",
            f"data.project={project}", "hardware=cpu", "data.image_size=32", "data.batch_size=8", "model=resnet18",
            "trainer.max_epochs=2", "callbacks.progress_bar.kind=none"]
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next((tmp_path / "runs").rglob("run.json")).parent
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["task"] == "multilabel"
    assert record["best"]["metric"] == "val_f1" and (run_dir / record["best"]["checkpoint"]).is_file()
    assert {"test_f1", "test_acc", "test_loss"} <= set(record["test_metrics"])
    epochs = json.loads((run_dir / "metrics.json").read_text())
    assert [e["epoch"] for e in epochs] == [0, 1] and all(0.0 <= e["val_f1"] <= 1.0 for e in epochs)
