"""Refused starts and failing runs: a busy project, an impossible resume, NaN losses, config mistakes,
a broken dataset.json or image, stale runs of other hosts, and the runs command over what they leave.

Every run is ``python train.py`` in a subprocess. What a refusal must leave: one ``Error:`` line, nothing
written (or a failed run.json with its reason and the files it wrote), and the other runs untouched.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from datetime import datetime, timedelta, timezone

import pytest
from omegaconf import OmegaConf

from aistudio.runs.catalog import find_run
from aistudio.runs.record import effective_status, load_run, stale_reason
from tests.helpers import (
    DEFAULT_PATH,
    FAST_TRAIN,
    epochs_in,
    run_train,
    run_train_reporting_imports,
    runs_cli,
    start_train,
    wait_until,
)

pytestmark = pytest.mark.slow


def test_a_refused_start_writes_nothing_and_a_resume_cannot_change_the_model(tmp_path, color_project):
    args = ["data=project", f"data.project={color_project}", *DEFAULT_PATH, "callbacks.early_stopping=null"]
    # an interrupted run of the project, to be resumed later
    stopped_dir = tmp_path / "runs" / "stopped"
    stopped = start_train([*args, "trainer.max_epochs=500", f"hydra.run.dir={stopped_dir}"], tmp_path)
    wait_until(stopped, lambda: len(epochs_in(stopped_dir)) >= 1)
    stopped.send_signal(signal.SIGINT)
    stopped.communicate(timeout=60)
    assert stopped.returncode == 128 + signal.SIGINT and load_run(stopped_dir)["status"] == "interrupted"
    # a failed run, newer than the interrupted one
    failed_dir = tmp_path / "runs" / "failed"
    assert run_train([*args, "optimizer.lr=-1", f"hydra.run.dir={failed_dir}"], tmp_path).returncode == 1
    failed = load_run(failed_dir)  # failed inside torch: recorded with its traceback, the files it wrote kept
    assert failed["status"] == "failed" and failed["ended_at"] and failed["error"]["type"] == "ValueError"
    assert "Invalid learning rate" in failed["error"]["message"] and "Traceback" in failed["error"]["traceback"]
    assert (failed_dir / "config.json").is_file()
    assert "Invalid learning rate" in (failed_dir / "logs" / "training.log").read_text()
    before = (stopped_dir / "run.json").read_bytes()

    # a resume that changes the model is refused before anything is touched, naming the key
    changed = run_train([f"resume={stopped_dir}", "model=mobilenet_v3_small"], tmp_path)
    assert changed.returncode == 1
    errors = [line for line in changed.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "model=mobilenet_v3_small" in errors[0] and "model.weights=" in errors[0], \
        changed.stderr[-2000:]
    assert (stopped_dir / "run.json").read_bytes() == before

    first_dir = tmp_path / "runs" / "first"
    first = start_train([*args, "trainer.max_epochs=500", f"hydra.run.dir={first_dir}"], tmp_path)
    try:
        wait_until(first, lambda: len(epochs_in(first_dir)) >= 1)
        second = run_train_reporting_imports([*args, f"hydra.run.dir={tmp_path / 'runs' / 'second'}"], tmp_path)
        assert second.returncode == 1
        assert "another training run is active" in second.stderr and str(first_dir) in second.stderr
        assert not (tmp_path / "runs" / "second").exists()  # a refused start leaves nothing behind
        assert "imported: []" in second.stderr  # refused at once: before torch, torchvision and Lightning
        # resuming the interrupted run while the project is busy: refused, and the run is untouched
        refused = run_train_reporting_imports([f"resume={stopped_dir}"], tmp_path)
        assert refused.returncode == 1 and "another training run is active" in refused.stderr
        assert "imported: []" in refused.stderr
        assert (stopped_dir / "run.json").read_bytes() == before
        # sharing the devices on purpose is allowed
        shared = run_train([*args, "trainer.max_epochs=1", "exclusive=false",
                            f"hydra.run.dir={tmp_path / 'runs' / 'shared'}"], tmp_path)
        assert shared.returncode == 0, shared.stderr[-3000:]
    finally:
        os.kill(first.pid, signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGINT
    assert load_run(first_dir)["status"] == "interrupted"
    # the lock went with the first run; `aistudio runs resume` picks the latest *interrupted* run (first),
    # not the newer failed one, and a named interrupted run resumes too
    done = load_run(first_dir)["epochs_completed"]
    too_few = run_train([f"resume={first_dir}", f"trainer.max_epochs={done - 1}"], tmp_path)
    assert too_few.returncode == 1 and f"trainer.max_epochs={done} or more" in too_few.stderr, too_few.stderr[-2000:]
    assert "Traceback" not in too_few.stderr and load_run(first_dir)["status"] == "interrupted"
    resumed = runs_cli(tmp_path, "resume", "stopped", f"trainer.max_epochs={load_run(stopped_dir)['epochs_completed'] + 1}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = load_run(stopped_dir)
    assert record["status"] == "completed" and record["attempt"] == 2
    latest = runs_cli(tmp_path, "resume", f"trainer.max_epochs={done + 1}")
    assert latest.returncode == 0 and f"resume={first_dir.resolve()}" in latest.stdout, latest.stderr[-3000:]
    assert load_run(first_dir)["status"] == "completed"


def test_a_nan_loss_fails_the_run_naming_step_and_batch(tmp_path, color_project):
    # std 0 makes every normalised pixel inf: the very first loss is NaN
    args = ["data=project", f"data.project={color_project}", *FAST_TRAIN, "data.std=[0,0,0]", "trainer.max_epochs=10",
            "callbacks.early_stopping=null", "trainer.num_sanity_val_steps=0"]
    failed = run_train([*args, f"hydra.run.dir={tmp_path / 'fail'}"], tmp_path)
    assert failed.returncode == 1
    assert "loss is nan at step 0 (epoch 0, batch 0)" in failed.stderr and "Traceback" not in failed.stderr
    record = load_run(tmp_path / "fail")
    assert record["status"] == "failed" and "step 0" in record["error"]["message"]
    # checked every 2 steps (a GPU's default is 50: no host sync per step): still the step where it began
    deferred = run_train([*args, "task.module.non_finite_check_every=2", f"hydra.run.dir={tmp_path / 'every2'}"],
                         tmp_path)
    assert deferred.returncode == 1 and "loss is nan at step 0 (epoch 0, batch 0; seen at step 1, checked every 2)" \
        in deferred.stderr, deferred.stderr[-2000:]
    assert load_run(tmp_path / "every2")["status"] == "failed"

    skipped = run_train([*args, "task.module.non_finite_loss=skip", f"hydra.run.dir={tmp_path / 'skip'}"], tmp_path)
    assert skipped.returncode == 1 and "20 batches in a row were skipped" in skipped.stderr
    log = (tmp_path / "skip" / "logs" / "training.log").read_text()
    assert log.count("batch skipped (task.module.non_finite_loss=skip)") == 20


CONFIG_MISTAKES = {  # found by the checks before anything is built -> what they say
    "+optimizer.momentum=0.9 optimizer=adam": "optimizer.momentum: Adam takes no argument 'momentum'",
    "+trainer.max_epoch=3": "trainer.max_epoch: Trainer takes no argument 'max_epoch' (did you mean max_epochs",
    "model.name=resnet19 model=torchvision": "model.name='resnet19' is not a torchvision classification model",
}


@pytest.mark.parametrize("override", list(CONFIG_MISTAKES))
def test_config_mistakes_are_named_before_anything_is_built(compose_cfg, color_project, override):
    from aistudio import AistudioError
    from aistudio.training.config_checks import check_config

    config = OmegaConf.to_container(compose_cfg("data=project", f"data.project={color_project}", *override.split()),
                                    resolve=True)
    config.pop("hydra", None)
    with pytest.raises(AistudioError, match=re.escape(CONFIG_MISTAKES[override])):
        check_config(config)


@pytest.mark.parametrize(("override", "message"), [
    ("+trainer.max_epoch=3", CONFIG_MISTAKES["+trainer.max_epoch=3"]),  # the checks above, as train.py reports them
    ("+model.dropout_rate=0.2", "unexpected keyword argument 'dropout_rate'"),  # found when the model is built
])
def test_config_mistakes_are_one_line_and_nothing_is_built(tmp_path, color_project, override, message):
    run_dir = tmp_path / "run"
    result = run_train(["data=project", f"data.project={color_project}", *FAST_TRAIN, *override.split(),
                        f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert load_run(run_dir)["status"] == "failed" and not (run_dir / "checkpoints").exists()


def test_a_broken_dataset_json_fails_before_torch_or_lightning_is_imported(tmp_path, color_project):
    (color_project / "dataset.json").write_text('{"version": 1, "classes": ["a"], "images": [}')
    run_dir = tmp_path / "run"
    result = run_train_reporting_imports(["data=project", f"data.project={color_project}", *FAST_TRAIN,
                                          f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "dataset.json" in errors[0] and "line 1, column 45" in result.stderr, \
        result.stderr[-2000:]
    assert "imported: []" in result.stderr
    record = load_run(run_dir)
    assert record["status"] == "failed" and "dataset.json" in record["error"]["message"]


@pytest.mark.parametrize("damage", ["truncated_png", "corrupt_jpeg"])
def test_an_image_broken_on_disk_fails_the_run_naming_the_file(tmp_path, color_project, damage):
    victim = sorted((color_project / "img").glob("*.png"))[0]
    if damage == "truncated_png":
        victim.write_bytes(victim.read_bytes()[:-40])
    else:
        import cv2

        jpeg = victim.with_suffix(".jpg")
        cv2.imwrite(str(jpeg), cv2.imread(str(victim)))
        data = jpeg.read_bytes()
        jpeg.write_bytes(data[:-50])  # the scan data is cut: headers (and the header check) are intact
        victim.unlink()
        dataset = json.loads((color_project / "dataset.json").read_text())
        for image in dataset["images"]:
            image["file"] = image["file"].replace(victim.name, jpeg.name)
        (color_project / "dataset.json").write_text(json.dumps(dataset))
        victim = jpeg
    # the header check passes (the header is intact); the worker process hits the damage while training
    result = run_train(["data=project", f"data.project={color_project}", *FAST_TRAIN, "data.num_workers=1",
                        "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 1
    error = result.stderr[result.stderr.index("Error:"):]
    assert victim.name in error and "truncated" in error and "Original Traceback" not in result.stderr
    record = load_run(tmp_path / "run")
    assert record["status"] == "failed" and victim.name in record["error"]["message"]


def test_a_run_on_another_host_is_stale_only_when_its_heartbeat_is_overdue(tmp_path):
    now = datetime.now(timezone.utc)
    record = {"status": "running", "host": "node-that-is-not-" + socket.gethostname(), "pid": 1,
              "heartbeat_interval_s": 30, "heartbeat_at": (now - timedelta(seconds=60)).isoformat()}
    assert stale_reason(record, now) is None and effective_status(record) == "running"
    record["heartbeat_at"] = (now - timedelta(seconds=200)).isoformat()
    assert "no heartbeat" in stale_reason(record, now)
    assert effective_status({**record, "status": "completed"}) == "completed"


def test_runs_command_shows_retries_and_removes_only_failed_runs(tmp_path, color_project):
    ok_dir, bad_dir = tmp_path / "runs" / "ok", tmp_path / "runs" / "bad"
    base = ["data=project", f"data.project={color_project}", *FAST_TRAIN, "trainer.max_epochs=1"]
    assert run_train([*base, f"hydra.run.dir={ok_dir}"], tmp_path).returncode == 0
    assert run_train([*base, "optimizer.lr=-1", f"hydra.run.dir={bad_dir}"], tmp_path).returncode == 1
    listing = runs_cli(tmp_path, "list")
    assert listing.returncode == 0
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    bad_id = load_run(bad_dir)["id"]
    assert "completed" in lines[load_run(ok_dir)["id"]] and "failed" in lines[bad_id]
    shown = runs_cli(tmp_path, "show", bad_id)
    assert shown.returncode == 0 and "ValueError" in shown.stdout
    assert find_run("bad", tmp_path / "runs") == bad_dir.resolve()
    refused = runs_cli(tmp_path, "resume", load_run(ok_dir)["id"])
    assert refused.returncode == 1 and "completed" in refused.stderr

    # retry with the override that fixes it: same directory, attempt 2, the failure kept in history
    retried = runs_cli(tmp_path, "retry", bad_id, "optimizer.lr=0.01")
    assert retried.returncode == 0, retried.stderr[-3000:]
    record = load_run(bad_dir)
    assert record["status"] == "completed" and record["attempt"] == 2
    assert record["history"][0]["status"] == "failed" and record["history"][0]["error"]["type"] == "ValueError"
    assert "optimizer.lr=0.01" in record["overrides"] and "optimizer.lr=-1" not in record["overrides"]

    worse_dir = tmp_path / "runs" / "worse"
    assert run_train([*base, "optimizer.lr=-2", f"hydra.run.dir={worse_dir}"], tmp_path).returncode == 1
    assert runs_cli(tmp_path, "remove", "ok").returncode == 1 and ok_dir.exists()
    removed = runs_cli(tmp_path, "remove", "--failed")
    assert removed.returncode == 0 and not worse_dir.exists() and ok_dir.exists() and bad_dir.exists()
    unknown = runs_cli(tmp_path, "show", "no-such-run")
    assert unknown.returncode == 1 and "aistudio runs list" in unknown.stderr


def test_the_heartbeat_thread_beats_while_active_and_never_rewrites_a_final_status(tmp_path):
    from aistudio.runs.heartbeat import Heartbeat
    from aistudio.runs.record import RunRecord

    record = RunRecord.create(tmp_path / "run")
    record.mark_running()
    first = load_run(tmp_path / "run")["heartbeat_at"]
    with Heartbeat(record, 0.05):
        time.sleep(0.3)
        beating = load_run(tmp_path / "run")
        assert beating["heartbeat_at"] > first and beating["heartbeat_interval_s"] == 0.05
        record.mark_completed()
        ended = load_run(tmp_path / "run")["updated_at"]
        time.sleep(0.2)
    assert load_run(tmp_path / "run")["updated_at"] == ended  # no beat after the final status
