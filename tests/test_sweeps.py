"""Sweeps that write standard run directories: sweep.json, Optuna with a persistent study, joblib
jobs in parallel, and DDP inside a multirun — each a real ``python train.py -m`` in a subprocess."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from aistudio.runs.record import load_run
from tests.helpers import FAST_TRAIN, run_train

TINY = [*FAST_TRAIN, "data.image_size=16", "trainer.max_epochs=1", "callbacks.early_stopping=null"]


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def test_a_sweep_writes_sweep_json_and_a_ranked_table_and_fails_when_a_job_failed(tmp_path, color_project):
    sweep = tmp_path / "sweep"
    result = run_train(["-m", "data=project", f"data.project={color_project}", *TINY, "optimizer.lr=0.05,-1,0.01",
                        f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 1  # every job ran; the failure is in the exit code
    assert "1 of 3 sweep jobs did not complete (jobs 1)" in result.stderr
    data = json.loads((sweep / "sweep.json").read_text())
    assert data["status"] == "failed" and data["failed_jobs"] == ["1"]
    assert "optimizer.lr=0.05,-1,0.01" in data["overrides"]
    jobs = data["jobs"]
    assert sorted(jobs) == ["0", "1", "2"] and len(job_dirs(sweep)) == 3
    for number, job in jobs.items():
        run = load_run(sweep / number)
        assert job["run_id"] == run["id"] and job["status"] == run["status"]
        assert job["objective"] == (run["objective"]["value"] if run["status"] == "completed" else None)
    assert jobs["1"]["status"] == "failed" and "Invalid learning rate" in jobs["1"]["error"]
    best = max(("0", "2"), key=lambda n: jobs[n]["objective"])
    assert data["best_job"] == best
    # the table: ranked by objective, showing only what differs between jobs
    table = result.stdout[result.stdout.index("ranked by objective"):].splitlines()
    assert table[1].split()[:3] == ["rank", "job", "status"]
    assert table[2].split()[:2] == ["1", best] and table[-1].split()[:3] == ["-", "1", "failed"]
    assert "data.project" not in table[2]


TINY_SEARCH = """# @package _global_
# the shipped Optuna search with a search space small enough for tests (a user's own search looks the same)
defaults:
  - optuna
hydra:
  sweeper:
    params:
      model: choice(resnet18)
      augmentation: choice(none, light)
      data.batch_size: choice(4, 8)
"""


def test_optuna_search_returns_objectives_and_a_resumed_study_continues(tmp_path, color_project):
    extra = tmp_path / "conf" / "hparams_search"
    extra.mkdir(parents=True)
    (extra / "tiny.yaml").write_text(TINY_SEARCH)
    args = ["-m", "hparams_search=tiny", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "data=project",
            f"data.project={color_project}", *TINY, "hydra.sweeper.n_trials=3",
            "hydra.sweeper.sampler.n_startup_trials=2"]
    first = run_train([*args, f"hydra.sweep.dir={tmp_path / 'first'}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    data = json.loads((tmp_path / "first" / "sweep.json").read_text())
    assert data["status"] == "completed" and len(data["jobs"]) == 3
    assert all(isinstance(j["objective"], float) for j in data["jobs"].values())
    sampled = [load_run(d)["overrides"] for d in job_dirs(tmp_path / "first")]
    assert all(any(o.startswith("optimizer.lr=") for o in s) for s in sampled)
    database = tmp_path / "runs" / "optuna.db"

    def trials() -> list[tuple[int, str]]:
        with sqlite3.connect(database) as db:
            return db.execute("select number, state from trials order by number").fetchall()

    assert trials() == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    # the same command again (e.g. after an interruption): the study continues its trial count
    again = run_train([*args, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'again'}"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert trials() == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE"), (3, "COMPLETE")]
    with sqlite3.connect(database) as db:
        values = dict(db.execute("select t.number, v.value from trials t join trial_values v "
                                 "on v.trial_id = t.trial_id").fetchall())
    objective = load_run(job_dirs(tmp_path / "again")[0])["objective"]["value"]
    assert values[3] == objective  # what train.py returned is what the study recorded


def test_joblib_runs_jobs_in_parallel_processes(tmp_path, color_project):
    sweep = tmp_path / "sweep"
    result = run_train(["-m", "hydra/launcher=parallel", "data=project", f"data.project={color_project}", *TINY,
                        "trainer.max_epochs=2", "seed=1,2", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [load_run(d) for d in job_dirs(sweep)]
    assert [r["status"] for r in runs] == ["completed", "completed"]
    assert len({r["pid"] for r in runs}) == 2  # two worker processes
    first, second = sorted(runs, key=lambda r: r["started_at"])
    assert second["started_at"] < first["ended_at"]  # they overlapped: the lock does not serialise them
    assert json.loads((sweep / "sweep.json").read_text())["status"] == "completed"


def rank_digests(run_dir: Path) -> dict[str, str]:
    log = (run_dir / "logs" / "training.log").read_text()
    return dict(re.findall(r"process rank (\d) \(pid \d+\): config sha256 (\w+)", log))


def assert_one_ddp_run(run_dir: Path, epochs: int) -> str:
    """A completed run trained by both ranks on one config; returns that config's digest."""
    assert load_run(run_dir)["status"] == "completed"
    assert [m["epoch"] for m in json.loads((run_dir / "metrics.json").read_text())] == list(range(epochs))
    ranks = rank_digests(run_dir)
    assert set(ranks) == {"0", "1"} and ranks["0"] == ranks["1"], ranks  # both ranks trained this job's config
    return ranks["0"]


def test_ddp_inside_a_multirun_trains_each_job_once_with_both_ranks_on_the_same_config(tmp_path, color_project):
    sweep = tmp_path / "sweep"
    result = run_train(["-m", "data=project", f"data.project={color_project}", *TINY, "hardware=cpu_ddp",
                        "trainer.max_epochs=2", "seed=1,2", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    dirs = job_dirs(sweep)
    assert len(dirs) == 2 and not (tmp_path / "runs").exists()  # no stray run directory from rank 1
    digests = [assert_one_ddp_run(run_dir, 2) for run_dir in dirs]
    assert digests[0] != digests[1]  # and each job its own (seed 1 vs 2)
    assert "train_ddp_process" not in (dirs[0] / ".hydra" / "config.yaml").read_text()


@pytest.mark.parametrize("mode", ["single", "optuna", "joblib"])
def test_ddp_in_a_single_run_an_optuna_and_a_joblib_sweep(tmp_path, color_project, mode):
    base = ["data=project", f"data.project={color_project}", *TINY, "hardware=cpu_ddp"]
    if mode == "single":
        result = run_train([*base, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=600)
        dirs = [tmp_path / "run"]
    else:
        extra = tmp_path / "conf" / "hparams_search"
        extra.mkdir(parents=True)
        (extra / "tiny.yaml").write_text(TINY_SEARCH)
        launch = (["hparams_search=tiny", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "hydra.sweeper.n_trials=2"]
                  if mode == "optuna" else ["hydra/launcher=parallel", "seed=1,2"])
        result = run_train(["-m", *launch, *base, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, timeout=600)
        dirs = job_dirs(tmp_path / "sweep")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(dirs) == (1 if mode == "single" else 2)
    for run_dir in dirs:
        assert_one_ddp_run(run_dir, 1)
    strays = [p.name for p in (tmp_path / "runs").iterdir()] if (tmp_path / "runs").exists() else []
    assert strays in ([], ["optuna.db"])  # rank 1 never started a run (or a search) of its own
