"""``logger=mlflow``: a real run, read back from the MLflow file store with MLflow's own client."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aistudio.training.mlflow_link import default_run_name, flatten_config, run_params
from tests.helpers import FAST_TRAIN, ROOT, run_train, subprocess_env

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e .[mlflow])")


def mlflow_runs(tmp_path: Path, monkeypatch, run_dir: Path):
    """The MLflow runs (one per attempt, oldest first) of the file store under tmp_path/runs/mlruns that
    carry the aistudio run id of ``run_dir``."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(f"file:{tmp_path / 'runs' / 'mlruns'}")
    record = json.loads((run_dir / "run.json").read_text())
    experiment = client.get_experiment_by_name("aistudio-classification")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], f"tags.`aistudio.run_id` = '{record['id']}'",
                              order_by=["attribute.start_time ASC"])
    return client, runs, record


def mlflow_run(tmp_path: Path, monkeypatch, run_dir: Path):
    client, runs, record = mlflow_runs(tmp_path, monkeypatch, run_dir)
    assert len(runs) == 1
    return client, runs[0], record


def artifact_json(client, run_id: str, name: str, tmp_path: Path):
    local = client.download_artifacts(run_id, name, str(tmp_path / "downloaded"))
    return json.loads(Path(local).read_text())


@pytest.mark.slow
def test_mlflow_run_is_linked_to_the_run_directory(tmp_path, color_project, monkeypatch):
    run_dir = tmp_path / "run"
    result = run_train(["data=project", f"data.project={color_project}", *FAST_TRAIN, "trainer.max_epochs=2",
                        "logger=mlflow", "optimizer.lr=0.01", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client, run, record = mlflow_run(tmp_path, monkeypatch, run_dir)
    assert record["status"] == "completed"

    tags = run.data.tags
    assert run.info.status == "FINISHED" and run.info.run_name == record["id"]  # overrides too long for it
    assert tags["aistudio.run_dir"] == str(run_dir.resolve()) == record["run_dir"]
    assert tags["aistudio.task"] == "classification" and tags["aistudio.model"] == "resnet18"
    assert tags["aistudio.overrides"] == " ".join(record["overrides"]) and tags["aistudio.attempt"] == "1"
    assert tags["aistudio.status"] == "completed"
    assert tags["aistudio.best_checkpoint"] == str(run_dir.resolve() / record["best"]["checkpoint"])
    assert tags["aistudio.best"].startswith(f"val_acc={record['best']['value']:.6g} (epoch {record['best']['epoch']})")
    assert record["id"] in tags["mlflow.note.content"]

    params = run.data.params
    assert params["override.optimizer.lr"] == "0.01" and params["override.logger"] == "mlflow"
    assert params["override.trainer.max_epochs"] == "2"
    assert params["optimizer.lr"] == "0.01" and params["model.name"] == "resnet18"
    assert params["data.batch_size"] == "8" and params["trainer.max_epochs"] == "2"
    # Lightning's log_hyperparams adds what the config does not show, never a duplicate of it
    assert params["model/num_classes"] == "3" and params["class_names"] == "['red', 'green', 'blue']"
    assert "model/name" not in params and "optimizer/lr" not in params and "optimizer/_partial_" not in params

    metrics_json = json.loads((run_dir / "metrics.json").read_text())
    history = sorted(client.get_metric_history(run.info.run_id, "val_acc"), key=lambda m: m.step)
    assert [m.value for m in history] == pytest.approx([e["val_acc"] for e in metrics_json])
    assert len(history) == len(metrics_json) == 2 and history[0].step < history[1].step
    assert run.data.metrics["best_val_acc"] == pytest.approx(record["best"]["value"])
    for name, value in record["test_metrics"].items():
        assert run.data.metrics[name] == pytest.approx(value)

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "metrics.json", "run.json", "logs"} <= artifacts
    assert not any(a.endswith(".ckpt") or a == "checkpoints" for a in artifacts)  # log_checkpoint=false
    assert artifact_json(client, run.info.run_id, "run.json", tmp_path) == record  # the final one
    assert artifact_json(client, run.info.run_id, "metrics.json", tmp_path) == metrics_json
    assert artifact_json(client, run.info.run_id, "config.json", tmp_path) == \
        json.loads((run_dir / "config.json").read_text())


@pytest.mark.slow
def test_a_failed_run_is_failed_in_mlflow(tmp_path, color_project, monkeypatch):
    # std 0 makes every normalised pixel inf: the first loss is NaN and the run fails inside fit
    run_dir = tmp_path / "fail"
    result = run_train(["data=project", f"data.project={color_project}", *FAST_TRAIN, "data.std=[0,0,0]",
                        "trainer.num_sanity_val_steps=0", "logger=mlflow", "logger.mlflow.log_checkpoint=true",
                        f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 1
    client, run, record = mlflow_run(tmp_path, monkeypatch, run_dir)
    assert record["status"] == "failed"
    assert run.info.status == "FAILED" and run.data.tags["aistudio.status"] == "failed"
    assert run.data.tags["aistudio.error"].startswith(record["error"]["type"])
    assert "aistudio.best_checkpoint" not in run.data.tags
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "run.json"} <= artifacts and "checkpoints" not in artifacts
    assert artifact_json(client, run.info.run_id, "run.json", tmp_path)["status"] == "failed"


@pytest.mark.slow
def test_an_interrupted_run_is_killed_in_mlflow_and_its_resume_is_a_second_mlflow_run(tmp_path, color_project,
                                                                                      monkeypatch):
    run_dir = tmp_path / "stopped"
    args = ["data=project", f"data.project={color_project}", *FAST_TRAIN, "logger=mlflow", "test=false",
            "trainer.max_epochs=500", "callbacks.early_stopping=null", f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                               env=subprocess_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "metrics.json").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0 and json.loads((run_dir / "run.json").read_text())["status"] == "interrupted", \
        stderr[-3000:]
    client, (stopped,), record = mlflow_runs(tmp_path, monkeypatch, run_dir)
    assert stopped.info.status == "KILLED" and stopped.data.tags["aistudio.status"] == "interrupted"
    assert stopped.data.tags["aistudio.error"].startswith("Interrupted: ")

    done = record["epochs_completed"]
    resumed = run_train([f"resume={run_dir}", f"trainer.max_epochs={done + 1}", "logger.mlflow.log_checkpoint=true"],
                        tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, runs, record = mlflow_runs(tmp_path, monkeypatch, run_dir)
    assert record["status"] == "completed" and record["attempt"] == 2 and len(runs) == 2
    second = runs[1]
    assert second.info.status == "FINISHED" and second.data.tags["aistudio.attempt"] == "2"
    assert second.info.run_name.startswith(f"{record['id']} (attempt 2)")
    assert second.data.params["override.trainer.max_epochs"] == str(done + 1)
    assert client.get_run(stopped.info.run_id).info.status == "KILLED"  # the first attempt is left as it was
    copied = [a.path for a in client.list_artifacts(second.info.run_id, "checkpoints")]
    assert copied == ["checkpoints/best.ckpt"] and second.data.tags["aistudio.best_checkpoint"].endswith("best.ckpt")
    assert not client.list_artifacts(stopped.info.run_id, "checkpoints")


def test_params_are_valid_mlflow_keys_within_the_value_limit():
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, validate_param_and_metric_name

    config = {"optimizer": {"lr": 0.01, "_partial_": True, "_target_": "torch.optim.SGD"}, "resume": None,
              "data": {"mean": [0.5, 0.5], "project": "x" * 10000, "flip": True}}
    params = run_params(["+extra.key=1", "~callbacks.early_stopping", "hydra/launcher=joblib", "model@x=y"], config)
    assert params["optimizer.lr"] == "0.01" and params["optimizer._target_"] == "torch.optim.SGD"
    assert "optimizer._partial_" not in params and params["resume"] == "null" and params["data.flip"] == "true"
    assert params["data.mean"] == "[0.5, 0.5]" and len(params["data.project"]) == MAX_PARAM_VAL_LENGTH
    assert params["override.extra.key"] == "1" and params["override.callbacks.early_stopping"] == "(deleted)"
    assert params["override.hydra/launcher"] == "joblib" and params["override.model_x"] == "y"
    assert all(validate_param_and_metric_name(key) for key in params)
    assert dict(flatten_config({"a": {}})) == {}


def test_run_name_is_the_run_id_plus_short_overrides(tmp_path):
    assert default_run_name({"id": "20250101-120000-abcdef", "overrides": ["optimizer.lr=0.01"]}, tmp_path) == \
        "20250101-120000-abcdef optimizer.lr=0.01"
    assert default_run_name({"id": "r1", "overrides": [f"data.project={'x' * 80}"]}, tmp_path) == "r1"
    assert default_run_name({}, tmp_path / "2025-01-01_12-00-00") == "2025-01-01_12-00-00"
    assert default_run_name({"id": "r1", "attempt": 2, "overrides": ["resume=r1"]}, tmp_path) == \
        "r1 (attempt 2) resume=r1"
