"""The end of a DDP job started by rank 0 (``aistudio.training.ddp_relaunch.reap_started_ranks``).

Real processes and Lightning's real child observer: a rank that exits abnormally after its job is done
must not get rank 0 killed in the middle of a sweep's next job, and a rank still running is ended."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

from aistudio.training import ddp_relaunch
from tests.helpers import ROOT

# rank 1 aborts right after "its job" (as a gloo rank could at interpreter exit); rank 0 reaps it, then
# goes on (the sweep's next job) for longer than Lightning's observer takes to poll again
NEXT_JOB_AFTER_AN_ABORTED_RANK = textwrap.dedent("""
    import logging, os, subprocess, sys, time
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
    from aistudio.training.ddp_relaunch import reap_started_ranks

    procs = [subprocess.Popen([sys.executable, "-c", "import os, time; time.sleep(0.3); os.abort()"])]
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
