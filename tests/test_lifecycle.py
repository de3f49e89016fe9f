"""Run lifecycle under real stops: Ctrl-C in a terminal, signals to the process group, kill -9 anywhere,
and the resume right after, which must end exactly where an uninterrupted run does.

Every test drives ``python train.py`` in a subprocess on the default data path (DataLoader workers on:
``data.num_workers`` is left at ``auto``) and checks what a researcher would find on disk afterwards:
run.json's status and reason, the checkpoints, metrics.json, the lock. Refused starts and failing runs:
test_refusals_and_failures.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from aistudio.runs.record import effective_status, load_run, stale_reason
from tests.helpers import (
    DEFAULT_PATH,
    TerminalRun,
    epochs_in,
    make_color_project,
    run_train,
    runs_cli,
    start_train,
    wait_until,
)

pytestmark = pytest.mark.slow

EPOCHS = 4
BATCHES = 24  # 96 train images in batches of 4: a few seconds an epoch, long enough to stop inside one
DETERMINISTIC = [*DEFAULT_PATH, "data.image_size=48", "data.batch_size=4", "trainer.deterministic=true",
                 "callbacks.early_stopping=null", f"trainer.max_epochs={EPOCHS}", "augmentation=light",
                 "test=false"]


def wait_inside_an_epoch(process: subprocess.Popen | TerminalRun, run_dir: Path) -> None:
    """Return about 40% into the third epoch, scaled by how long the second took here (the first is
    slower: warm-up)."""
    wait_until(process, lambda: len(epochs_in(run_dir)) >= 2)
    second = json.loads((run_dir / "metrics.json").read_text())[1]
    time.sleep(0.4 * float(second["epoch_time_s"]))


def temp_files(run_dir: Path) -> list[Path]:
    return [p for where in (run_dir, run_dir / "checkpoints") if where.is_dir() for p in where.glob(".*.tmp")]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == EPOCHS - 1
    return checkpoint["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def read_continuously(paths: list[Path], root: Path, stop: threading.Event, errors: list[str]) -> None:
    """A reader polling every few milliseconds (what the runs command and a dashboard do) — it must never fail.
    Not a busy loop: one core spinning here slows the trainer's two OpenMP threads on two cores ten-fold."""
    from aistudio.cli.runs import summary_rows

    while not stop.wait(0.005):
        for path in paths:
            try:
                if path.exists():
                    json.loads(path.read_text())
            except (ValueError, FileNotFoundError) as err:  # FileNotFoundError: the file vanished mid-read
                errors.append(f"{path.name}: {err}")
        try:
            summary_rows(root)
        except Exception as err:  # noqa: BLE001 - any failure of the listing counts
            errors.append(f"runs list: {err!r}")


@pytest.fixture(scope="module")
def big_colors(tmp_path_factory) -> Path:
    return make_color_project(tmp_path_factory.mktemp("lifecycle") / "colors", per_class=36, size=48)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, big_colors) -> Path:
    tmp = tmp_path_factory.mktemp("baseline")
    run_dir = tmp / "run"
    result = run_train(["data=project", f"data.project={big_colors}", *DETERMINISTIC, f"hydra.run.dir={run_dir}"], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def assert_resumed_like_the_uninterrupted_run(run_dir: Path, uninterrupted: Path, attempts: int = 2) -> None:
    record = load_run(run_dir)
    assert record["status"] == "completed" and record["attempt"] == attempts, record.get("error")
    entries = json.loads((run_dir / "metrics.json").read_text())
    assert [e["epoch"] for e in entries] == list(range(EPOCHS))  # every epoch exactly once
    assert_same_weights(final_weights(uninterrupted), final_weights(run_dir))
    theirs = json.loads((uninterrupted / "metrics.json").read_text())
    for mine, reference in zip(entries, theirs):
        assert mine["step"] == reference["step"]
        learning_rates = {k: v for k, v in reference.items() if k.startswith("lr_")}
        assert learning_rates and {k: mine.get(k) for k in learning_rates} == learning_rates  # resumed epoch too
        assert mine["val_acc"] == pytest.approx(reference["val_acc"], abs=1e-6)
        assert mine["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-5)
    # duration_s covers every attempt; each earlier attempt keeps its own
    earlier = [h["duration_s"] for h in record["history"]]
    assert all(d is not None and d >= 0 for d in earlier), record["history"]
    assert record["duration_s"] == pytest.approx(sum(earlier) + record["attempt_duration_s"], abs=0.01)
    assert not temp_files(run_dir)


def last_checkpoint_position(run_dir: Path) -> tuple[int, int] | None:
    """(epoch, batches done in it) of the run's last.ckpt, read without loading its tensors (memory-mapped)."""
    path = run_dir / "checkpoints" / "last.ckpt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)["aistudio_resume"]
    except (FileNotFoundError, RuntimeError, KeyError):  # not written yet
        return None
    return int(state["epoch"]), int(state["batches_done"])


def test_kill_9_reads_interrupted_frees_the_lock_and_resume_matches_an_uninterrupted_run(
        tmp_path, big_colors, uninterrupted):
    """Killed inside an epoch after last.ckpt was written there (callbacks.model_checkpoint.last_every_minutes,
    here every 0.6 s): the resume continues from that batch, not from the epoch's start, and ends exactly where
    the uninterrupted run did. (A kill with last.ckpt from an epoch's end: test_kill_9_anywhere_... below.)"""
    run_dir = tmp_path / "runs" / "killed"
    args = ["data=project", f"data.project={big_colors}", *DETERMINISTIC,
            "callbacks.model_checkpoint.last_every_minutes=0.01"]
    process = start_train([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    stop, errors = threading.Event(), []
    reader = threading.Thread(target=read_continuously,
                              args=([run_dir / "run.json", run_dir / "metrics.json"], tmp_path / "runs", stop, errors))
    reader.start()
    try:
        # written inside a later epoch within its first half (the epoch's end, which writes it again, is far off)
        wait_until(process, lambda: (position := last_checkpoint_position(run_dir)) is not None
                   and position[0] >= 1 and 0 < position[1] <= BATCHES // 2, poll_s=0.1)
        process.kill()  # SIGKILL: no handler runs, nothing is cleaned up by the process; its workers live on a while
        process.wait(timeout=30)
    finally:
        stop.set()
        reader.join()
    assert not errors, errors[:5]
    record = load_run(run_dir)
    assert record["status"] == "running"  # what the dead process left behind...
    assert effective_status(record) == "interrupted"  # ...and what every reader shows
    assert "is gone" in stale_reason(record)
    listed = json.loads(runs_cli(tmp_path, "list", "--json").stdout)
    assert [(r["id"], r["status"]) for r in listed] == [(record["id"], "interrupted")]

    # resume at once (the dead run's workers may still be alive), by id prefix, with only the override
    # that names the run: its own overrides come back
    epoch, done = last_checkpoint_position(run_dir)
    resumed = run_train([f"resume={record['id'][:18]}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # also proves the dead run's lock was free
    assert f"resuming inside epoch {epoch}: {done} batches were done" in resumed.stdout, resumed.stdout[-3000:]
    record = load_run(run_dir)
    assert record["history"][0]["status"] == "interrupted"  # the attempt the kill ended, found stale
    assert "is gone" in record["history"][0]["error"]["message"]
    assert_resumed_like_the_uninterrupted_run(run_dir, uninterrupted)


STOPS = {  # how users stop a run -> the signal the trainer gets
    "ctrl-c in a terminal": signal.SIGINT,  # the terminal sends SIGINT to the whole foreground process group
    "SIGTERM to the process group": signal.SIGTERM,  # timeout, systemd, schedulers
    "SIGTERM to the main process": signal.SIGTERM,
}


@pytest.mark.parametrize("how", list(STOPS))
def test_a_stop_inside_an_epoch_saves_last_ckpt_there_and_the_resumed_run_matches(tmp_path, big_colors,
                                                                                   uninterrupted, how):
    run_dir = tmp_path / "runs" / "stopped"
    args = ["data=project", f"data.project={big_colors}", *DETERMINISTIC, f"hydra.run.dir={run_dir}"]
    signum = STOPS[how]
    if how == "ctrl-c in a terminal":
        process = TerminalRun(args, tmp_path)  # the rich progress bar is on: stdout is a terminal
        wait_inside_an_epoch(process, run_dir)
        process.type_ctrl_c()
        code, output = process.wait(timeout=120), process.text()
    else:
        process = start_train(args, tmp_path, new_session=True)
        wait_inside_an_epoch(process, run_dir)
        if "group" in how:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        _, output = process.communicate(timeout=120)
        code = process.returncode
    assert code == 128 + signum, output[-3000:]
    assert f"Stopped by {signal.Signals(signum).name}" in output
    assert "worker" not in output.lower(), output[-3000:]  # no worker died or raised
    record = load_run(run_dir)
    assert record["status"] == "interrupted", record["error"]
    assert f"stopped by {signal.Signals(signum).name}" in record["error"]["message"]
    assert "last.ckpt saved there" in record["error"]["message"]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    done = checkpoint["aistudio_resume"]["batches_done"]
    assert 0 < done < BATCHES, f"stopped at batch {done}: not inside an epoch, the in-epoch resume is not tested"

    if how == "SIGTERM to the main process":  # `aistudio runs resume` with no run: the latest interrupted one
        resumed = runs_cli(tmp_path, "resume")
    else:
        resumed = run_train([f"resume={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{done} batches were done" in (run_dir / "logs" / "training.log").read_text()
    assert_resumed_like_the_uninterrupted_run(run_dir, uninterrupted)

    refused = run_train([f"resume={run_dir}"], tmp_path)
    assert refused.returncode == 1 and "already completed" in refused.stderr and "model.weights=" in refused.stderr


def kill_at(point: str, run_dir: Path, process: subprocess.Popen) -> None:
    if point == "start-up":
        wait_until(process, lambda: (run_dir / "run.json").exists(), poll_s=0.005)
        time.sleep(random.uniform(0, 2))
    elif point == "inside an epoch":
        wait_inside_an_epoch(process, run_dir)
        time.sleep(random.uniform(0, 0.3))
    elif point == "during a checkpoint write":  # the first checkpoint's temp file exists: its write is under way
        folder = run_dir / "checkpoints"
        wait_until(process, lambda: folder.is_dir() and any(folder.glob(".*.tmp")), poll_s=0.001)
    else:
        wait_until(process, SpareRewrite(run_dir / "checkpoints"), poll_s=0.001)
    process.kill()
    process.wait(timeout=30)


class SpareRewrite:
    """True while a replaced checkpoint kept as the spare is being rewritten under a temp name (from the
    epoch after the first best/last replacement on: every write is one; see training/checkpoint_spare.py)."""

    def __init__(self, folder: Path):
        self.folder, self.inode = folder, None

    def __call__(self) -> bool:
        try:
            self.inode = (self.folder / ".spare-checkpoint.tmp").stat().st_ino
        except FileNotFoundError:
            pass
        return self.inode is not None and any(temp.name != ".spare-checkpoint.tmp" and _inode(temp) == self.inode
                                              for temp in self.folder.glob(".*.tmp"))


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:  # renamed over best/last since the listing
        return None


@pytest.mark.parametrize("point", ["start-up", "inside an epoch", "during a checkpoint write",
                                   "while a replaced checkpoint is rewritten"])
def test_kill_9_anywhere_then_an_immediate_resume_completes_like_the_uninterrupted_run(tmp_path, big_colors,
                                                                                      uninterrupted, point):
    run_dir = tmp_path / "runs" / "killed"
    process = start_train(["data=project", f"data.project={big_colors}", *DETERMINISTIC,
                           f"hydra.run.dir={run_dir}"], tmp_path)
    kill_at(point, run_dir, process)
    if point == "while a replaced checkpoint is rewritten":  # the kill hit the rewrite: its file is left
        assert [p.name for p in temp_files(run_dir) if p.name != ".spare-checkpoint.tmp"], "killed after the rewrite"
    resumed = run_train([f"resume={run_dir}"], tmp_path)  # at once: the killed run's workers may still live
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "another training run is active" not in resumed.stderr
    assert_resumed_like_the_uninterrupted_run(run_dir, uninterrupted)
