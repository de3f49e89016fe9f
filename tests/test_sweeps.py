"""Sweeps that write standard run directories: sweep.json, Optuna with a persistent study, joblib
jobs in parallel, and DDP inside a multirun — each a real ``python train.py -m`` in a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aistudio.runs.atomic import read_json
from aistudio.runs.record import load_run
from tests.helpers import FAST_TRAIN, ROOT, run_train, subprocess_env

TINY = [*FAST_TRAIN, "data.image_size=16", "trainer.max_epochs=1", "callbacks.early_stopping=null"]


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


@pytest.mark.slow
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
    for number, lr in (("0", 0.05), ("2", 0.01)):  # each completed job: a whole standard run directory
        job_dir = sweep / number
        assert len(json.loads((job_dir / "metrics.json").read_text())) == 1
        assert (job_dir / "checkpoints" / "best.ckpt").is_file() and (job_dir / "logs" / "training.log").is_file()
        assert json.loads((job_dir / "config.json").read_text())["optimizer"]["lr"] == lr
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


STUDY = "classification-search"  # the shipped study name for the classification task: ${task.name}-search
TINY_WORKERS = [a for a in TINY if not a.startswith("data.num_workers=")]  # the default loader workers


def optuna_search(tmp_path: Path, color_project: Path, *extra: str, space: str = TINY_SEARCH) -> list[str]:
    """``-m hparams_search=tiny`` (the small search space above) on the tiny project, plus ``extra``."""
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "tiny.yaml").write_text(space)
    return ["-m", "hparams_search=tiny", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "data=project",
            f"data.project={color_project}", *TINY_WORKERS, *extra]


def load_study(tmp_path: Path, name: str = STUDY):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")


def param_sets(study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.trials]


def test_the_sampler_seed_follows_the_seed_and_the_trials_already_in_the_study():
    import optuna
    from hydra.utils import instantiate

    from aistudio.sweeps.optuna_search import ResumableTPESampler, resumed_seed

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = {"_target_": "aistudio.sweeps.optuna_search.ResumableTPESampler", "seed": 42, "n_startup_trials": 5}

    def search(storage, n: int = 2, sampler=None) -> list[float]:
        study = optuna.create_study(study_name="s", storage=storage, sampler=sampler or instantiate(config),
                                    direction="maximize", load_if_exists=True)
        values = []
        for _ in range(n):
            trial = study.ask()
            values.append(trial.suggest_float("lr", 1e-4, 1e-1, log=True))
            study.tell(trial, values[-1])
        return values

    first, again = optuna.storages.InMemoryStorage(), optuna.storages.InMemoryStorage()
    fresh = search(first)
    assert fresh == search(optuna.storages.InMemoryStorage(), sampler=optuna.samplers.TPESampler(
        seed=42, n_startup_trials=5))  # a fresh study: exactly what TPESampler(seed=seed) samples
    resumed = search(first)
    assert len(set(fresh + resumed)) == 4  # resumed: new points, not the start-up trials again
    assert search(again) == fresh and search(again) == resumed  # deterministic for (seed, trials so far)
    assert resumed_seed(42, 0) == 42 and resumed_seed(None, 3) is None
    assert resumed_seed(42, 2) == resumed_seed(42, 2) != resumed_seed(42, 3) != resumed_seed(43, 3)
    assert isinstance(instantiate(config), ResumableTPESampler)


@pytest.mark.slow
def test_a_resumed_optuna_search_samples_new_points(tmp_path, color_project):
    """The same search run again continues the study (trial numbers go on) with new points, and what each
    job's train.py returned is what the study recorded."""
    args = optuna_search(tmp_path, color_project, "hydra.sweeper.n_trials=2")
    for sweep in ("first", "again"):  # the default n_startup_trials=5: every trial is a random start-up one
        result = run_train([*args, f"hydra.sweep.dir={tmp_path / sweep}"], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        data = json.loads((tmp_path / sweep / "sweep.json").read_text())
        assert data["status"] == "completed" and len(data["jobs"]) == 2
        assert all(isinstance(j["objective"], float) for j in data["jobs"].values())
        sampled = [load_run(d)["overrides"] for d in job_dirs(tmp_path / sweep)]
        assert all(any(o.startswith("optimizer.lr=") for o in s) for s in sampled)  # the shipped search space
    study = load_study(tmp_path)
    assert [(t.number, t.state.name) for t in study.trials] == [(n, "COMPLETE") for n in range(4)]
    assert len(set(param_sets(study))) == 4, param_sets(study)  # before: trials 2-3 repeated trials 0-1
    assert "already holds 2 trials: sampler seed" in result.stdout + result.stderr
    objectives = [load_run(d)["objective"]["value"] for sweep in ("first", "again") for d in job_dirs(tmp_path / sweep)]
    assert [t.value for t in study.trials] == objectives


def sweeps_under(runs: Path) -> list[Path]:
    return sorted(p for p in (runs / "multirun").iterdir() if p.is_dir()) if (runs / "multirun").is_dir() else []


def run_status(run_dir: Path) -> str | None:
    return (read_json(run_dir / "run.json", default=None) or {}).get("status")


@pytest.mark.slow
def test_an_interrupted_optuna_search_continues_its_study_when_the_same_command_runs_again(tmp_path, color_project):
    # the default sweep folder (runs/multirun/<time>): the very same command twice
    args = optuna_search(tmp_path, color_project, "hydra.sweeper.n_trials=2")
    command = [sys.executable, str(ROOT / "train.py"), *args]

    def job(number: int) -> Path:  # a job of the first sweep
        return sweeps_under(tmp_path / "runs")[0] / str(number)

    with open(tmp_path / "first.out", "w") as out, open(tmp_path / "first.err", "w") as err:
        search = subprocess.Popen(command, cwd=ROOT, env=subprocess_env(tmp_path), stdout=out, stderr=err,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        # the first trial completed and the second one is training (not between two jobs)
        while not (sweeps_under(tmp_path / "runs") and run_status(job(0)) == "completed"
                   and run_status(job(1)) == "running"):
            assert search.poll() is None and time.monotonic() < deadline, (tmp_path / "first.err").read_text()[-3000:]
            time.sleep(0.1)
        os.killpg(search.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole foreground group
        try:
            code = search.wait(timeout=90)
        except subprocess.TimeoutExpired:
            left = subprocess.run(["ps", "-o", "pid,ppid,stat,wchan:24,args", "-g", str(search.pid)],
                                  capture_output=True, text=True).stdout
            pytest.fail(f"the search did not exit within 90 s of SIGINT; its process group:\n{left}\n"
                        f"{(tmp_path / 'first.err').read_text()[-2000:]}")
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
            search.wait()
    errors = (tmp_path / "first.err").read_text()
    assert code != 0, errors[-3000:]
    assert run_status(job(1)) == "interrupted", errors[-3000:]
    study = load_study(tmp_path)
    assert [t.number for t in study.trials] == [0, 1]  # the search stopped: no trial after the interrupted one
    assert study.trials[0].state.name == "COMPLETE" and study.trials[1].state.name != "COMPLETE"

    time.sleep(1.1)  # a new sweep folder (its name has the time to the second)
    again = run_train(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    study = load_study(tmp_path)
    states = [(t.number, t.state.name) for t in study.trials]
    assert states[:1] == [(0, "COMPLETE")] and states[1][1] != "COMPLETE"
    assert states[2:] == [(2, "COMPLETE"), (3, "COMPLETE")], states  # trial numbers go on
    assert len(set(param_sets(study))) == 4, param_sets(study)
    sweeps = sweeps_under(tmp_path / "runs")
    assert len(sweeps) == 2 and [run_status(d) for d in job_dirs(sweeps[1])] == ["completed", "completed"]
    assert json.loads((sweeps[1] / "sweep.json").read_text())["status"] == "completed"


FAILING_SEARCH = TINY_SEARCH + "      optimizer.lr: choice(-1, 0.01)\n"  # lr=-1: the optimizer refuses it


@pytest.mark.slow
def test_a_failed_optuna_trial_is_fail_in_the_study_and_the_search_goes_on(tmp_path, color_project):
    # seed=4 samples lr=-1 first, then 0.01 (start-up trials are random, seeded; see the assert below)
    args = optuna_search(tmp_path, color_project, "hydra.sweeper.n_trials=2", "seed=4",
                         f"hydra.sweep.dir={tmp_path / 'sweep'}", space=FAILING_SEARCH)
    result = run_train(args, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]  # a failed job: the sweep's exit code says so
    study = load_study(tmp_path)
    trials = [(t.params["optimizer.lr"], t.state.name) for t in study.trials]
    assert trials == [(-1, "FAIL"), (0.01, "COMPLETE")], trials
    data = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert data["status"] == "failed" and data["failed_jobs"] == ["0"] and data["best_job"] == "1"
    assert "Invalid learning rate" in data["jobs"]["0"]["error"]
    assert study.trials[1].value == data["jobs"]["1"]["objective"]


@pytest.mark.slow
def test_the_optuna_direction_follows_the_task_mode(tmp_path, color_project):
    args = optuna_search(tmp_path, color_project, "hydra.sweeper.n_trials=1", "task.monitor=val_loss",
                         "task.mode=min", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    result = run_train(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(tmp_path)
    assert [d.name for d in study.directions] == ["MINIMIZE"]
    run = load_run(tmp_path / "sweep" / "0")
    assert run["objective"]["metric"] == "val_loss" and study.trials[0].value == run["objective"]["value"]
    # the same study with the task's default mode (val_acc, max): refused before anything trains
    other = [a for a in args if not a.startswith(("task.", "hydra.sweep.dir="))]
    refused = run_train([*other, f"hydra.sweep.dir={tmp_path / 'refused'}"], tmp_path)
    assert refused.returncode == 1
    assert "was created to minimize, but this search would maximize" in refused.stderr, refused.stderr[-3000:]
    assert len(load_study(tmp_path).trials) == 1 and not (tmp_path / "refused").exists()


def test_the_sweep_summary_follows_the_job_entries_whenever_one_changes(tmp_path, compose_cfg):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from aistudio.runs.atomic import atomic_write_json
    from aistudio.sweeps.recorder import SweepRecorder

    sweep, recorder = tmp_path / "sweep", SweepRecorder()
    cfg = compose_cfg(f"hydra.sweep.dir={sweep}")
    recorder.on_multirun_start(cfg)

    def job_ends(number: int, **run) -> dict:
        """A job writes its run.json and ends (Hydra's on_job_end); returns sweep.json then."""
        job = compose_cfg(f"hydra.sweep.dir={sweep}", output_dir=sweep / str(number))
        with read_write(job.hydra), open_dict(job.hydra):
            job.hydra.mode, job.hydra.job.num = RunMode.MULTIRUN, number
        HydraConfig.instance().set_config(job)
        atomic_write_json(sweep / str(number) / "run.json", {"id": f"run-{number}", "best": {"mode": "max"}, **run})
        recorder.on_job_end(job, job_return=None)
        return json.loads((sweep / "sweep.json").read_text())

    summary = lambda d: (d["status"], d["failed_jobs"], d["best_job"])  # noqa: E731
    assert summary(json.loads((sweep / "sweep.json").read_text())) == ("running", [], None)
    data = job_ends(0, status="completed", objective={"metric": "val_acc", "value": 0.5})
    assert summary(data) == ("running", [], "0")
    data = job_ends(1, status="interrupted", error={"message": "SIGTERM"})  # e.g. a SLURM preemption
    assert summary(data) == ("running", ["1"], "0")
    data = job_ends(1, status="completed", objective={"metric": "val_acc", "value": 0.9})  # requeued, completed
    assert summary(data) == ("running", [], "1") and data["jobs"]["1"]["status"] == "completed"
    recorder.on_multirun_end(cfg)
    assert summary(json.loads((sweep / "sweep.json").read_text())) == ("completed", [], "1")


@pytest.mark.slow
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
    log = (run_dir / "logs" / "training.log").read_text()
    assert "DDP rank 1" not in log, log[-2000:]  # rank 1 exited cleanly (code 0) once the job was done
    return ranks["0"]


@pytest.mark.slow
def test_ddp_inside_a_multirun_trains_each_job_once_with_both_ranks_on_the_same_config(tmp_path, color_project):
    sweep = tmp_path / "sweep"
    result = run_train(["-m", "data=project", f"data.project={color_project}", *TINY, "hardware=cpu_ddp",
                        "trainer.max_epochs=2", "seed=1,2", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    dirs = job_dirs(sweep)
    assert len(dirs) == 2 and not (tmp_path / "runs").exists()  # no stray run directory from rank 1
    digests = [assert_one_ddp_run(run_dir, 2) for run_dir in dirs]
    assert digests[0] != digests[1]  # and each job its own (seed 1 vs 2)
    assert "train_ddp_process" not in (dirs[0] / ".hydra" / "config.yaml").read_text()


@pytest.mark.slow
def test_a_ddp_run_stopped_by_sigterm_resumes_on_both_ranks(tmp_path, color_project):
    """A single DDP run, stopped as a scheduler stops it (SIGTERM to the process group) and resumed: rank 1
    must not refuse the resume because rank 0 already holds the run ("still going")."""
    run_dir = tmp_path / "run"
    args = ["data=project", f"data.project={color_project}", *TINY_WORKERS, "hardware=cpu_ddp", "trainer.max_epochs=30",
            "data.num_workers=1"]  # auto gives 0 here (2 ranks on 2 cores); a worker per rank also gets the SIGTERM
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                               env=subprocess_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "metrics.json").exists() or not json.loads((run_dir / "metrics.json").read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGTERM)
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, errors[-3000:]
    done = load_run(run_dir)["epochs_completed"]
    assert load_run(run_dir)["status"] == "interrupted" and 1 <= done < 30
    resumed = run_train([f"resume={run_dir}", f"trainer.max_epochs={done + 1}"], tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "still going" not in resumed.stderr
    assert_one_ddp_run(run_dir, done + 1)
    assert load_run(run_dir)["attempt"] == 2
    assert not (tmp_path / "runs").exists()  # rank 1 never started a run of its own


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["optuna", "joblib"])
def test_ddp_in_an_optuna_and_a_joblib_sweep(tmp_path, color_project, mode):
    base = ["data=project", f"data.project={color_project}", *TINY, "hardware=cpu_ddp"]
    extra = tmp_path / "conf" / "hparams_search"
    extra.mkdir(parents=True)
    (extra / "tiny.yaml").write_text(TINY_SEARCH)
    launch = (["hparams_search=tiny", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "hydra.sweeper.n_trials=2"]
              if mode == "optuna" else ["hydra/launcher=parallel", "seed=1,2"])
    result = run_train(["-m", *launch, *base, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, timeout=600)
    dirs = job_dirs(tmp_path / "sweep")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(dirs) == 2
    for run_dir in dirs:
        assert_one_ddp_run(run_dir, 1)
    strays = [p.name for p in (tmp_path / "runs").iterdir()] if (tmp_path / "runs").exists() else []
    assert strays in ([], ["optuna.db"])  # rank 1 never started a run (or a search) of its own
