"""The end of a DDP job started by rank 0 (``aistudio.training.ddp_relaunch.reap_started_ranks``), and a
job that one rank fails (``aistudio.runs.rank_errors``).

Real processes and Lightning's real child observer: a rank that exits abnormally after its job is done
must not get rank 0 killed in the middle of a sweep's next job, and a rank still running is ended. A real
``train.py`` under DDP with one rank failing: the run records that rank's error."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aistudio.runs.record import load_run
from aistudio.training import ddp_relaunch
from tests.helpers import FAST_TRAIN, ROOT, run_train

# rank 1 aborts right after "its job" (as a gloo rank could at interpreter exit); rank 0 reaps it, then
# goes on (the sweep's next job) for longer than Lightning's observer takes to poll again
NEXT_JOB_AFTER_AN_ABORTED_RANK = textwrap.dedent("""
    import logging, os, subprocess, sys, time
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
    from aistudio.training.ddp_relaunch import reap_started_ranks

    abort = "import os, resource, time; resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); time.sleep(0.3); os.abort()"
    procs = [subprocess.Popen([sys.executable, "-c", abort])]  # no core file, whatever the machine's limit
    _ChildProcessObserver(main_pid=os.getpid(), child_processes=procs, sleep_period=1).start()
    reap_started_ranks(procs if sys.argv[1] == "reap" else list(procs), finished=True)
    time.sleep(2.5)  # the next job: two of the observer's polls
    print("next job done")
""")


def run_rank0(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NEXT_JOB_AFTER_AN_ABORTED_RANK, mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_a_rank_that_aborts_after_the_job_is_reported_and_does_not_kill_the_next_job():
    result = run_rank0("reap")
    assert result.returncode == 0 and "next job done" in result.stdout, result.stderr[-2000:]
    assert "DDP rank 1" in result.stderr and "exited with code -6 after the job had finished" in result.stderr


def test_without_emptying_the_observed_list_lightning_kills_rank_0():
    """The mechanism the reaping defends against (so the test above can fail): the observer still sees
    the aborted rank and SIGKILLs the process that started it."""
    result = run_rank0("keep-list")
    assert result.returncode == -9 and "next job done" not in result.stdout, result.stdout


def test_a_rank_still_running_after_a_failed_job_is_ended(monkeypatch, caplog):
    monkeypatch.setattr(ddp_relaunch, "FAILED_GRACE_S", 0.5)
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # waits in a collective
    done = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])  # failed like rank 0
    procs = [stuck, done]
    with caplog.at_level(logging.WARNING, logger="aistudio.train"):
        ddp_relaunch.reap_started_ranks(procs, finished=False)
    assert stuck.returncode == -9 and done.returncode == 1 and procs == []
    assert "DDP rank 1" in caplog.text and "still running after rank 0 failed" in caplog.text
    assert "DDP rank 2" not in caplog.text  # a rank failing with rank 0 is expected, not news


@pytest.mark.slow
@pytest.mark.parametrize("failing_rank", [1, 0])
def test_the_run_records_the_failing_ranks_own_error_not_the_lost_connection(tmp_path, color_project, failing_rank):
    """rank 1 fails: rank 0 only sees gloo's "Connection closed by peer"; run.json and the console must say
    what rank 1 hit. rank 0 fails: its own error, as in a single process."""
    corrupt = tmp_path / "truncated.png"
    corrupt.write_bytes((color_project / "img" / "red_00.png").read_bytes()[:60])
    run_dir = tmp_path / "run"
    # workers on: "auto" gives each of 2 ranks on 2 cores none, so one is asked for
    with_workers = [arg for arg in FAST_TRAIN if not arg.startswith("data.num_workers")] + ["data.num_workers=1"]
    result = run_train(["data=project", f"data.project={color_project}", *with_workers, "data.image_size=16",
                        "hardware=cpu_ddp", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}",
                        "+callbacks.fail._target_=tests.failing_rank.DecodeOnRank",
                        f"+callbacks.fail.rank={failing_rank}", f"+callbacks.fail.path={corrupt}"], tmp_path,
                       timeout=240)
    assert result.returncode == 1
    record = load_run(run_dir)
    assert record["status"] == "failed"
    message = record["error"]["message"]
    assert f"{corrupt}: cannot decode this image" in message and "Connection closed" not in message, message
    assert ("DDP rank 1 failed:" in message) == (failing_rank == 1)
    # rank 0 prints its error last (it waits for the ranks it started): the one the user reads
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors and str(corrupt) in errors[-1], result.stderr[-3000:]
    assert errors[-1].startswith("Error: DDP rank 1 failed:") == (failing_rank == 1)
    assert not list((run_dir / "checkpoints").glob("*.tmp*"))  # nothing half-written left behind
    rank1 = int(re.search(r"process rank 1 \(pid (\d+)\)", (run_dir / "logs" / "training.log").read_text())[1])
    assert not Path(f"/proc/{rank1}").exists()  # rank 0 waited for the rank it started: nothing left running


def test_rank_errors_prefer_a_ranks_own_failure_and_an_earlier_attempts_are_cleared(tmp_path):
    from aistudio.data.images import ImageReadError
    from aistudio.runs.rank_errors import clear_rank_errors, lost_peer, other_rank_failure, record_rank_error

    gloo = RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:1")
    assert lost_peer(gloo) and not lost_peer(ImageReadError("a.png: cannot decode this image"))
    (tmp_path / "logs").mkdir()
    assert other_rank_failure(tmp_path) is None
    record_rank_error(tmp_path, 1, gloo)  # rank 1 only saw rank 0 go: not the reason
    record_rank_error(tmp_path, 3, ImageReadError("b.png: cannot decode this image"))
    record_rank_error(tmp_path, 2, MemoryError("cannot allocate 1 GiB"))
    assert other_rank_failure(tmp_path) == {"rank": 2, "message": "MemoryError: cannot allocate 1 GiB",
                                            "lost_peer": False}
    clear_rank_errors(tmp_path)
    assert other_rank_failure(tmp_path) is None and not list((tmp_path / "logs").iterdir())
