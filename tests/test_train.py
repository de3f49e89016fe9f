"""End-to-end: ``python train.py`` in a subprocess on a tiny real dataset, checking every artifact."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import FAST_TRAIN, ROOT, edit_dataset, run_train, subprocess_env

pytestmark = pytest.mark.slow


def watch_statuses(run_json: Path, stop: threading.Event, seen: list[str], parse_errors: list[str]) -> None:
    """Read run.json in a tight loop while the run writes it: record every status, every parse failure."""
    while not stop.is_set():
        try:
            text = run_json.read_text()
        except FileNotFoundError:
            time.sleep(0.005)
            continue
        try:
            status = json.loads(text)["status"]
        except (json.JSONDecodeError, KeyError) as err:
            parse_errors.append(repr(err))
            continue
        if not seen or seen[-1] != status:
            seen.append(status)
        time.sleep(0.002)


def test_run_directory_is_complete_and_best_checkpoint_reloads(tmp_path, color_project):
    run_dir = tmp_path / "run"
    seen: list[str] = []
    errors: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_statuses, args=(run_dir / "run.json", stop, seen, errors))
    watcher.start()
    try:
        result = run_train(["data=project", f"data.project={color_project}", *FAST_TRAIN,
                            "trainer.max_epochs=3", "trainer.log_every_n_steps=1", f"hydra.run.dir={run_dir}",
                            "optimizer.lr=0.01"], tmp_path)
    finally:
        stop.set()
        watcher.join()
    assert result.returncode == 0, result.stderr[-3000:]
    assert seen == ["pending", "running", "completed"] and not errors

    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "completed" and run["error"] is None and run["attempt"] == 1
    assert run["task"] == "classification" and run["model"] == "resnet18"
    assert run["duration_s"] > 0 and run["ended_at"] > run["started_at"]
    assert "train.py" in run["command"] and f"data.project={color_project}" in run["overrides"]
    assert run["versions"]["torch"] and run["host"] and run["pid"] > 0 and run["epochs_completed"] == 3

    config = json.loads((run_dir / "config.json").read_text())
    assert config["trainer"]["max_epochs"] == 3 and config["optimizer"]["lr"] == 0.01
    assert config["data"]["project"] == str(color_project)  # resolved, no interpolations left
    assert "${" not in (run_dir / "config.json").read_text()

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    for entry in metrics:
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "val_precision", "val_recall",
                "lr_backbone", "lr_head", "epoch_time_s", "step"} <= set(entry)
    best_value = max(m["val_acc"] for m in metrics)
    best_epoch = [m for m in metrics if m["val_acc"] == best_value][-1]  # ties: the later epoch wins
    assert run["best"]["epoch"] == best_epoch["epoch"] and run["best"]["value"] == best_epoch["val_acc"]
    assert run["best"]["checkpoint"] == "checkpoints/best.ckpt"
    assert run["final_metrics"]["epoch"] == 2
    assert set(run["test_metrics"]) >= {"test_acc", "test_loss", "test_f1"}

    import torch

    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2 and best["epoch"] == run["best"]["epoch"]  # ckpt "epoch" = epochs finished - 1
    assert best["aistudio"]["class_names"] == ["red", "green", "blue"] and best["aistudio"]["config"] == config
    log = (run_dir / "logs" / "training.log").read_text()
    assert "epoch 2" in log and "test (best checkpoint)" in log

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("val_acc")) == 3 and len(events.Scalars("train_loss_step")) == 9

    # best.ckpt in a fresh process: load_from_checkpoint alone rebuilds the module; validating it on
    # the same data gives the val metric recorded for the best epoch.
    probe = f"""
import json, lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import OmegaConf
from aistudio.tasks.classification import ClassificationModule
module = ClassificationModule.load_from_checkpoint({str(run_dir / 'checkpoints' / 'best.ckpt')!r})
config = OmegaConf.create(json.load(open({str(run_dir / 'config.json')!r})))
data = instantiate(config.data)
trainer = pl.Trainer(accelerator='cpu', logger=False, enable_progress_bar=False, enable_model_summary=False)
print('VAL_ACC', trainer.validate(module, datamodule=data, verbose=False)[0]['val_acc'])
"""
    check = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=subprocess_env(tmp_path),
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-3000:]
    value = float(check.stdout.split("VAL_ACC")[1].split()[0])
    assert value == pytest.approx(run["best"]["value"], abs=1e-6)


def test_bad_dataset_is_one_clear_error_and_a_failed_run(tmp_path, color_project):
    edit_dataset(color_project, lambda d: (d["images"][2].update(label="purple"),
                                           d["images"][7].update(split=["trian", "val"])))
    run_dir = tmp_path / "run"
    result = run_train(["data=project", f"data.project={color_project}", *FAST_TRAIN,
                        f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "2 problem(s) found" in result.stderr and "images[2] (img/red_02.png)" in result.stderr
    assert "'purple' is not one of the 3 classes" in result.stderr and "['trian']" in result.stderr
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "failed" and run["error"]["type"] == "DatasetError"
    assert not (run_dir / "checkpoints").exists()


def test_missing_required_value_is_reported_before_training(tmp_path):
    env_free = ["data=project", "hardware=cpu"]
    result = run_train(env_free, tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "data.project" in result.stderr and "data.project=" in result.stderr


def test_fast_dev_run_completes_without_checkpoints(tmp_path, color_project):
    run_dir = tmp_path / "run"
    result = run_train(["data=project", f"data.project={color_project}", *FAST_TRAIN, "debug=fast_dev_run",
                        f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "completed" and run["best"]["checkpoint"] is None and run["test_metrics"]
    assert len(json.loads((run_dir / "metrics.json").read_text())) == 1
    assert not list(run_dir.glob("checkpoints/*")) and not (run_dir / "tensorboard").exists()  # as it says


def test_logger_none_trains_and_relative_paths_survive_hydra_chdir(tmp_path, color_project):
    # logger=none: no LR monitor (Lightning refuses one without a logger); the lr is still in metrics.json
    first = tmp_path / "runs" / "first"
    result = run_train(["data=project", f"data.project={color_project}", *FAST_TRAIN, "trainer.max_epochs=1",
                        "logger=none", f"hydra.run.dir={first}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (first / "tensorboard").exists()
    assert any(k.startswith("lr_") for k in json.loads((first / "metrics.json").read_text())[0])

    # hydra.job.chdir=True: the job runs inside its run directory, but data.project and model.weights given
    # relative to the folder the command ran in still mean that folder's files
    second = tmp_path / "runs" / "second"
    relative = [f"data.project={color_project.relative_to(tmp_path)}",
                f"model.weights={(first / 'checkpoints' / 'best.ckpt').relative_to(tmp_path)}"]
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "data=project", *relative, *FAST_TRAIN,
                             "trainer.max_epochs=1", "hydra.job.chdir=True", f"hydra.run.dir={second}"],
                            cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((second / "run.json").read_text())["status"] == "completed"
    assert "tensors from" in (second / "logs" / "training.log").read_text()  # the weights file was found
