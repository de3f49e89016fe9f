"""Sweeps on a real SLURM cluster (``scripts/slurm/cluster.sh up``, which ``.ci/run`` starts).

Without a reachable cluster these tests skip, saying why; with ``AISTUDIO_REQUIRE_SLURM=1`` (CI) they
fail instead, so a cluster that did not come up cannot pass unnoticed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from aistudio.runs.record import load_run
from tests.helpers import FAST_TRAIN, make_color_project, run_train
from tests.test_sweeps import rank_digests

pytestmark = pytest.mark.slow

DEFAULT_CONF = Path(os.environ.get("AISTUDIO_SLURM_DIR", "/tmp/aistudio-slurm")) / "slurm.conf"


def slurm_env() -> dict[str, str] | None:
    env = dict(os.environ)
    if not env.get("SLURM_CONF") and DEFAULT_CONF.is_file():
        env["SLURM_CONF"] = str(DEFAULT_CONF)
    if not shutil.which("sinfo") or not env.get("SLURM_CONF"):
        return None
    try:
        probe = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return env if probe.returncode == 0 and probe.stdout.strip() else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict[str, str]:
    env = slurm_env()
    if env is None:
        reason = ("no SLURM cluster reachable (start one with scripts/slurm/cluster.sh up, then "
                  "export SLURM_CONF=/tmp/aistudio-slurm/slurm.conf)")
        if os.environ.get("AISTUDIO_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    env["OMP_NUM_THREADS"] = "1"  # one CPU per job: two jobs share the 2-core node
    return env


def slurm(env: dict[str, str], *args: str) -> str:
    return subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=30, check=True).stdout


def sacct_states(env: dict[str, str], job: str) -> dict[str, str]:
    """Final states per array task, polled until accounting has them (it lags the job by a moment)."""
    states: dict[str, str] = {}
    for _ in range(60):
        lines = slurm(env, "sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State").split()
        states = dict(line.split("|") for line in lines if "|" in line)
        if states and all(s not in ("RUNNING", "PENDING", "COMPLETING") for s in states.values()):
            return states
        time.sleep(1)
    return states


def slurm_args(sweep: Path) -> list[str]:
    return ["-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
            "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}"]


def submitted_job(sweep: Path) -> str:
    """The array job id submitit used (its folder name under .submitit/, e.g. 12_0 -> 12)."""
    names = [p.name for p in (sweep / ".submitit").iterdir() if p.is_dir()]
    return sorted(n.split("_")[0] for n in names)[0]


def test_a_slurm_sweep_runs_every_job_records_failures_and_does_not_hang(tmp_path, cluster, monkeypatch):
    for key in ("SLURM_CONF", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, cluster[key])
    project = make_color_project(tmp_path / "colors")
    sweep = tmp_path / "sweep"
    clock = time.monotonic()
    result = run_train([*slurm_args(sweep), "data=project", f"data.project={project}", *FAST_TRAIN,
                        "data.image_size=16", "trainer.max_epochs=1", "optimizer.lr=0.01,0.05,-1"], tmp_path,
                       timeout=600)
    assert time.monotonic() - clock < 300
    assert result.returncode == 1 and "1 of 3 sweep jobs did not complete (jobs 2)" in result.stderr
    states = sacct_states(cluster, submitted_job(sweep))
    assert len(states) == 3 and set(states.values()) == {"COMPLETED"}, states  # SLURM ran all three to the end
    data = json.loads((sweep / "sweep.json").read_text())
    assert [data["jobs"][n]["status"] for n in ("0", "1", "2")] == ["completed", "completed", "failed"]
    for number in ("0", "1"):
        run = load_run(sweep / number)
        assert run["status"] == "completed" and run["slurm"]["job_id"] and run["test_metrics"]
        assert (sweep / number / "checkpoints" / "best.ckpt").is_file()
    assert "Invalid learning rate" in load_run(sweep / "2")["error"]["message"]


def test_a_requeued_job_resumes_from_last_ckpt_in_the_same_run_directory(tmp_path, cluster, monkeypatch):
    for key in ("SLURM_CONF", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, cluster[key])
    project = make_color_project(tmp_path / "colors", per_class=36, size=48)
    sweep = tmp_path / "sweep"
    outcome: dict[str, subprocess.CompletedProcess] = {}
    epochs = 6
    # with a DataLoader worker: SLURM signals every process of the job, the worker included
    sweep_thread = threading.Thread(target=lambda: outcome.setdefault("result", run_train(
        [*slurm_args(sweep), "hydra.launcher.cpus_per_task=2", "data=project", f"data.project={project}",
         *FAST_TRAIN, "data.num_workers=1", "data.image_size=48", f"trainer.max_epochs={epochs}",
         "callbacks.early_stopping=null", "seed=3"], tmp_path, timeout=600)))
    sweep_thread.start()
    metrics = sweep / "0" / "metrics.json"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and json.loads(metrics.read_text())) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metrics.exists(), "the job never finished an epoch"
    job = submitted_job(sweep)
    slurm(cluster, "scontrol", "requeue", job)  # SIGTERM now, the job goes back to the queue
    for _ in range(100):  # a requeued job waits ~2 min (BeginTime) before it may start again: not in a test
        if "PENDING" in slurm(cluster, "squeue", "-h", "-j", job, "-o", "%T"):
            slurm(cluster, "scontrol", "update", f"JobId={job}", "StartTime=now")
            break
        time.sleep(0.2)
    sweep_thread.join(timeout=600)
    result = outcome["result"]
    assert result.returncode == 0, result.stderr[-3000:]
    run = load_run(sweep / "0")
    assert run["status"] == "completed" and run["attempt"] == 2 and run["slurm"]["restart_count"] == "1"
    first = run["history"][0]
    assert first["status"] == "interrupted" and "SIGTERM" in first["error"]["message"]
    assert run["resumed_from"] == str((sweep / "0" / "checkpoints" / "last.ckpt").resolve())
    assert [m["epoch"] for m in json.loads(metrics.read_text())] == list(range(epochs))
    assert sacct_states(cluster, job)[job] == "COMPLETED"
    summary = json.loads((sweep / "sweep.json").read_text())  # the sweep waited for the requeued attempt
    assert summary["jobs"]["0"]["status"] == "completed"
    assert (summary["status"], summary["failed_jobs"], summary["best_job"]) == ("completed", [], "0")


def test_ddp_on_slurm_runs_one_task_per_rank_and_relaunches_nothing(tmp_path, cluster, monkeypatch):
    for key in ("SLURM_CONF", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, cluster[key])
    project = make_color_project(tmp_path / "colors")
    sweep = tmp_path / "sweep"
    result = run_train([*slurm_args(sweep), "data=project", f"data.project={project}", *FAST_TRAIN,
                        "hardware=cpu_ddp", "data.image_size=16", "trainer.max_epochs=2"], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    script = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "--ntasks-per-node=2" in script  # tasks per node = the hardware group's devices
    run = load_run(sweep / "0")
    assert run["status"] == "completed" and not (tmp_path / "runs").exists()
    ranks = rank_digests(sweep / "0")
    assert set(ranks) == {"0", "1"} and ranks["0"] == ranks["1"]
    assert "other ranks start as" not in (sweep / "0" / "logs" / "training.log").read_text()  # SLURM started both ranks; Lightning re-launched none
    assert [m["epoch"] for m in json.loads((sweep / "0" / "metrics.json").read_text())] == [0, 1]
