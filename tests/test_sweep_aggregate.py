"""Cross-validation / repeated-seed aggregates in sweep.json, and ``aistudio runs compare``: the pure
functions on hand-made job entries, then one real ``train.py -m data.split_index=1,2,3`` sweep on an
imported image folder with ``--folds 3`` (whose runs ``runs compare`` also reads)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from aistudio.runs.atomic import atomic_write_json
from aistudio.sweeps.aggregate import (
    aggregate,
    aggregate_lines,
    best_epoch_metrics,
    group_jobs,
    job_metrics,
    kind_of,
    metric_stats,
)
from aistudio.sweeps.recorder import summarize
from tests.helpers import FAST_TRAIN, run_train

BASE = ["data=project", "model=resnet18"]


def job(*overrides: str, status: str = "completed", val_acc: float | None = 0.9, test_acc: float | None = 0.8,
        **best) -> dict:
    """A sweep.json job entry as the recorder writes it."""
    return {"status": status, "overrides": [*BASE, *overrides], "objective_metric": "val_acc",
            "objective": val_acc if status == "completed" else None,
            "best_metrics": {} if status != "completed" else {"val_acc": val_acc, "val_loss": 0.3, **best},
            "test_metrics": {} if test_acc is None or status != "completed" else {"test_acc": test_acc}}


def jobs_of(*entries: dict) -> dict:
    return {str(n): e for n, e in enumerate(entries)}


def test_folds_are_grouped_by_the_other_overrides_with_mean_sample_std_min_max():
    jobs = jobs_of(*(job(f"model={m}", f"data.split_index={k}", val_acc=v)
                     for m, values in (("a", (0.9, 0.8, 1.0)), ("b", (0.5, 0.6, 0.7)))
                     for k, v in zip((1, 2, 3), values)))
    assert group_jobs(jobs) == [["0", "1", "2"], ["3", "4", "5"]]
    groups = aggregate(jobs)
    assert [g["kind"] for g in groups] == ["folds", "folds"] and [g["n"] for g in groups] == [3, 3]
    assert "model=a" in groups[0]["overrides"] and not any("split_index" in o for o in groups[0]["overrides"])
    assert groups[0]["varied"] == {"data.split_index": ["1", "2", "3"]}
    stats = groups[0]["metrics"]["val_acc"]
    assert stats["mean"] == pytest.approx(0.9) and stats["std"] == pytest.approx(0.1)  # ddof=1, not 0.0816
    assert (stats["min"], stats["max"], stats["n"]) == (0.8, 1.0, 3)
    assert set(groups[0]["metrics"]) == {"val_acc", "val_loss", "test_acc"}
    assert groups[0]["metrics"]["val_loss"]["std"] == 0.0
    lines = aggregate_lines(groups)
    assert lines[1] == "  model=a:" and lines[2].startswith("    val_acc 0.9000 ± 0.1000 (3 folds)")
    assert lines[3].startswith("    test_acc 0.8000 ± 0.0000 (3 folds)") and lines[4] == "  model=b:"


def test_seeds_runs_and_the_labels():
    assert kind_of(["data.split_index"]) == "folds" and kind_of(["seed"]) == "seeds"
    assert kind_of(["seed", "data.split_index"]) == "runs" and kind_of([]) is None
    seeds = aggregate(jobs_of(job("seed=1"), job("seed=2"), job("seed=3")))
    assert [(g["kind"], g["n"], g["total"]) for g in seeds] == [("seeds", 3, 3)]
    assert "(3 seeds)" in aggregate_lines(seeds)[1] and aggregate_lines(seeds)[1].startswith("  val_acc ")
    both = aggregate(jobs_of(*(job(f"seed={s}", f"data.split_index={k}") for s in (1, 2) for k in (1, 2))))
    assert [(g["kind"], g["n"]) for g in both] == [("runs", 4)]
    constant_split = aggregate(jobs_of(job("data.split_index=2", "seed=1"), job("data.split_index=2", "seed=2")))
    assert constant_split[0]["kind"] == "seeds" and "data.split_index=2" in constant_split[0]["overrides"]


def test_failed_jobs_are_left_out_and_counted():
    jobs = jobs_of(*(job(f"data.split_index={k}", val_acc=0.5 + k / 10) for k in (1, 2, 3, 4)),
                   job("data.split_index=5", status="failed"))
    (group,) = aggregate(jobs)
    assert (group["n"], group["total"], group["completed_jobs"]) == (4, 5, ["0", "1", "2", "3"])
    assert group["metrics"]["val_acc"]["mean"] == pytest.approx(0.75)
    assert "(4 of 5 folds)" in aggregate_lines([group])[1]
    summary = {"jobs": jobs}
    summarize(summary)  # the recorder's one place: the aggregate is written with the entries
    assert summary["aggregate"] == [group] and summary["failed_jobs"] == ["4"]


def test_no_aggregate_for_a_single_job_one_completed_job_or_a_sweep_without_repeats():
    assert aggregate(jobs_of(job("data.split_index=1"))) == []
    assert aggregate(jobs_of(job("seed=1"), job("seed=2", status="failed"))) == []
    assert aggregate(jobs_of(job("optimizer.lr=0.1"), job("optimizer.lr=0.01"))) == []  # groups of one
    assert aggregate(jobs_of(job("seed=1"), job("seed=1"))) == []  # the same run twice: nothing varied
    assert aggregate_lines([]) == []
    summary = {"jobs": jobs_of(job("optimizer.lr=0.1"))}
    summarize(summary)
    assert summary["aggregate"] == []


def test_what_a_job_contributes_and_a_metric_some_jobs_lack():
    entries = [{"epoch": 0, "val_acc": 0.5}, {"epoch": 1, "step": 8, "time": "t", "epoch_time_s": 1.5,
                                               "val_acc": 0.7, "val_loss": None, "train_loss": float("nan"),
                                               "lr_head": 0.1, "val_f1": 0.6}]
    assert best_epoch_metrics(entries, 1) == {"val_acc": 0.7, "val_f1": 0.6}
    assert best_epoch_metrics(entries, None) == {} and best_epoch_metrics([], 3) == {}
    old = {"objective_metric": "val_acc", "objective": 0.9, "test_metrics": {"test_acc": 0.8}}  # no best_metrics
    assert job_metrics(old) == {"val_acc": 0.9, "test_acc": 0.8}
    (group,) = aggregate(jobs_of(job("seed=1"), job("seed=2", test_acc=None), job("seed=3", test_acc=0.6)))
    assert group["metrics"]["test_acc"]["n"] == 2 and group["metrics"]["val_acc"]["n"] == 3
    assert "test_acc 0.7000 ± 0.1414 (2 of 3 seeds)" in aggregate_lines([group])[2]
    assert metric_stats([0.5]) == {"mean": 0.5, "std": None, "min": 0.5, "max": 0.5, "n": 1}
    assert metric_stats([1.0, 2.0, 3.0])["std"] == 1.0


def write_run(folder: Path, run_id: str, overrides: list[str], best: dict, test: dict) -> Path:
    atomic_write_json(folder / "run.json", {"id": run_id, "status": "completed", "overrides": overrides,
                                            "best": best, "test_metrics": test})
    return folder


def test_runs_compare_side_by_side_and_its_errors(tmp_path, capsys):
    from aistudio.cli.main import main

    root = tmp_path / "runs"
    write_run(root / "a", "20260101-000000-aaaaaa", ["model=resnet18", "optimizer.lr=0.1", "seed=1"],
              {"metric": "val_acc", "value": 0.9, "epoch": 3}, {"test_acc": 0.85, "test_loss": 0.4})
    write_run(root / "b", "20260102-000000-bbbbbb", ["model=resnet18", "optimizer.lr=0.01", "+trainer.x=1"],
              {"metric": "val_acc", "value": 0.95, "epoch": 7}, {"test_acc": 0.9})
    assert main(["runs", "--root", str(root), "compare", "20260101", str(root / "b")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["20260101-000000-aaaaaa", "20260102-000000-bbbbbb"]
    rows = {line.split()[0]: line.split()[1:] for line in out[1:] if line.strip()}
    assert rows["optimizer.lr"] == ["0.1", "0.01"] and rows["seed"] == ["1", "-"] and rows["trainer.x"] == ["-", "1"]
    assert "model" not in rows  # the same in both
    assert rows["value"] == ["0.9", "0.95"] and rows["epoch"] == ["3", "7"] and rows["metric"] == ["val_acc"] * 2
    assert rows["test_acc"] == ["0.85", "0.9"] and rows["test_loss"] == ["0.4", "-"]
    assert main(["runs", "compare", "--root", str(root), "a", "b", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["overrides"]["optimizer.lr"] == ["0.1", "0.01"] and table["test_metrics"]["test_loss"] == [0.4, None]
    assert table["best"]["epoch"] == [3, 7] and [r["id"] for r in table["runs"]][1] == "20260102-000000-bbbbbb"
    assert main(["runs", "--root", str(root), "compare", "a"]) == 1
    assert "at least 2 runs, got 1" in capsys.readouterr().err
    assert main(["runs", "--root", str(root), "compare", "a", "20260101-000000-aaaaaa"]) == 1
    assert "2 different runs" in capsys.readouterr().err
    assert main(["runs", "--root", str(root), "compare", "a", "nope"]) == 1
    assert "no run 'nope'" in capsys.readouterr().err


def make_image_folder(root: Path, per_class: int = 12, size: int = 16) -> Path:
    """Class sub-folders of noisy images with a weak colour bias: learnable, but not by every fold alike."""
    import cv2

    rng = np.random.default_rng(3)
    for label, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 200, size=(size, size, 3), dtype=np.uint8)
            pixels[:, :, label] = np.clip(pixels[:, :, label].astype(int) + 40, 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{i:02d}.png"), pixels)
    return root


@pytest.fixture(scope="module")
def cv_sweep(tmp_path_factory) -> tuple[Path, Path, str]:
    """One real 3-fold sweep on an imported image folder: (sweep folder, runs root, stdout)."""
    from aistudio.cli.main import main

    tmp = tmp_path_factory.mktemp("cv")
    project = tmp / "project"
    assert main(["import", "image-folder", str(make_image_folder(tmp / "images")), "--out", str(project),
                 "--folds", "3"]) == 0
    sweep = tmp / "runs" / "multirun" / "cv"
    result = run_train(["-m", "data=project", f"data.project={project}", *FAST_TRAIN, "data.image_size=16",
                        "trainer.max_epochs=2", "callbacks.early_stopping=null", "optimizer=adamw",
                        "optimizer.lr=0.001", "data.split_index=1,2,3", f"hydra.sweep.dir={sweep}"], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep, tmp / "runs", result.stdout


@pytest.mark.slow
def test_a_three_fold_sweep_writes_and_prints_the_aggregate(cv_sweep):
    sweep, _, stdout = cv_sweep
    data = json.loads((sweep / "sweep.json").read_text())
    (group,) = data["aggregate"]
    assert (group["kind"], group["n"], group["total"]) == ("folds", 3, 3)
    runs = [json.loads((sweep / str(n) / "run.json").read_text()) for n in range(3)]
    epochs = [json.loads((sweep / str(n) / "metrics.json").read_text()) for n in range(3)]
    expected = {"val_acc": [r["best"]["value"] for r in runs],  # what each run.json says, computed here
                "val_loss": [next(e["val_loss"] for e in es if e["epoch"] == r["best"]["epoch"])
                             for r, es in zip(runs, epochs)],
                **{name: [r["test_metrics"][name] for r in runs] for name in runs[0]["test_metrics"]}}
    assert "test_acc" in expected and "test_loss" in expected
    for name, values in expected.items():
        stats = group["metrics"][name]
        assert stats["n"] == 3 and stats["mean"] == pytest.approx(statistics.fmean(values)), name
        assert stats["std"] == pytest.approx(float(np.std(values, ddof=1)), abs=1e-12), name
        assert (stats["min"], stats["max"]) == (min(values), max(values)), name
    summary = stdout[stdout.index("mean ± sample std"):].splitlines()
    assert summary[1].startswith("  val_acc ") and "± " in summary[1] and "(3 folds)" in summary[1]
    assert summary[2].startswith("  test_acc ") and "(3 folds)" in summary[2]
    mean, std = group["metrics"]["val_acc"]["mean"], group["metrics"]["val_acc"]["std"]
    assert f"{mean:.4f} ± {std:.4f}" in summary[1] and math.isfinite(std)


@pytest.mark.slow
def test_runs_compare_reads_real_runs(cv_sweep, capsys):
    from aistudio.cli.main import main

    sweep, root, _ = cv_sweep
    runs = [json.loads((sweep / str(n) / "run.json").read_text()) for n in (0, 2)]
    assert main(["runs", "--root", str(root), "compare", runs[0]["id"][:-1], str(sweep / "2")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [r["id"] for r in runs]
    rows = {line.split()[0]: line.split()[1:] for line in out[1:] if line.strip()}
    assert rows["data.split_index"] == ["1", "3"] and rows["status"] == ["completed", "completed"]
    assert rows["epoch"] == [str(r["best"]["epoch"]) for r in runs]
    assert rows["test_acc"] == [f"{r['test_metrics']['test_acc']:.4g}" for r in runs]
    assert main(["runs", "--root", str(root), "compare", runs[0]["id"], runs[1]["id"], "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["overrides"] == {"data.split_index": ["1", "3"]}
    assert table["test_metrics"]["test_loss"] == [r["test_metrics"]["test_loss"] for r in runs]
