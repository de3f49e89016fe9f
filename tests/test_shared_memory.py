"""A small /dev/shm (Docker's default is 64 MB): DataLoader workers hand every batch over through shared memory.

``python train.py`` runs in a mount namespace of its own whose /dev/shm is a real tmpfs of a few MB (needs root
and unshare(1); skipped otherwise), with a DataLoader worker, as a container would run it. Where the default
collate's fresh segments fit, the run completes: the worker's reused batch memory takes only what those batches
leave free, and says once that /dev/shm is short (at 4 MB, reuse that ignored /dev/shm's size failed every time
in this setting, and fresh segments alone never did). Where not even fresh segments fit, the run is failed with
one message that says how big /dev/shm is and what to change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aistudio.runs.record import load_run
from tests.helpers import ROOT, subprocess_env

# 64 px RGB batches of 64 digits: 0.79 MB a batch; 2 epochs of 10 steps, so the train loader's worker still
# holds prefetched batches while the validation loader's fills its own
ARGS = ["hardware=cpu", "data.num_workers=1", "data.image_size=64", "data.batch_size=64", "trainer.max_epochs=2",
        "trainer.limit_train_batches=10", "trainer.limit_val_batches=3", "test=false", "plots=false",
        "callbacks.progress_bar.kind=none"]


def own_dev_shm_available() -> str | None:
    """Why a process cannot get a /dev/shm of its own here (None: it can)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("mount") is None:
        return "a /dev/shm of its own needs root, unshare(1) and mount(8)"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot mount a tmpfs on /dev/shm in a new mount namespace here: {probe.stderr.strip()}"
    return None


def train_with_dev_shm(size: str, run_dir: Path, tmp: Path) -> subprocess.CompletedProcess:
    """``python train.py`` in a new mount namespace whose /dev/shm is a tmpfs of ``size`` (e.g. "10m")."""
    command = [sys.executable, str(ROOT / "train.py"), *ARGS, f"hydra.run.dir={run_dir}"]
    script = f'mount -t tmpfs -o size={size} tmpfs /dev/shm && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *command], cwd=ROOT, env=subprocess_env(tmp),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def own_dev_shm() -> None:
    reason = own_dev_shm_available()
    if reason:
        pytest.skip(reason)


def test_a_small_dev_shm_trains_where_fresh_batches_fit(tmp_path, own_dev_shm):
    run_dir = tmp_path / "run"
    result = train_with_dev_shm("4m", run_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_run(run_dir)["status"] == "completed"
    warnings = [line for line in result.stdout.splitlines() if "shared memory is short" in line]
    assert 1 <= len(warnings) <= 2, result.stdout[-3000:]  # one line a loader at most (train, validation)
    assert "--shm-size" in warnings[0] and warnings[0].split(" - ", 1)[1] in (run_dir / "logs/training.log").read_text()


def test_a_dev_shm_too_small_for_any_batch_fails_the_run_with_what_to_change(tmp_path, own_dev_shm):
    run_dir = tmp_path / "run"
    result = train_with_dev_shm("512k", run_dir, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    record = load_run(run_dir)
    assert record["status"] == "failed"
    message = record["error"]["message"]
    assert message.startswith("the data-loading workers ran out of shared memory (/dev/shm is 524 kB)"), message
    for fix in ("data.num_workers (now 1)", "data.prefetch_factor (now 2)", "data.batch_size (now 64)",
                "data.num_workers=0", "--shm-size"):
        assert fix in message, message
    assert f"Error: {message}" in result.stderr
    assert "Traceback" not in result.stderr
