"""eval.py: a finished run rebuilt from its config.json and evaluated on a split, with per-class figures."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch

from aistudio import AistudioError
from aistudio.cli.run_args import mark_run_overrides, run_overrides
from aistudio.evaluation.trained_run import apply_overrides
from aistudio.tasks.class_report import classification_report, segmentation_report
from tests.helpers import (
    assert_eval_reproduces_test,
    assert_onnx_export_matches,
    is_png,
    run_entry,
)

OWN = ("run", "ckpt", "split", "runs_root")


# -- command line and config overrides (no training) ---------------------------------------------
def test_overrides_of_the_run_config_are_marked_for_hydra_and_taken_back():
    argv = ["eval.py", "run=x", "split=val", "data.split_index=3", "+data.extra=1", "-m", "--cfg", "job",
            "hydra.verbose=true"]
    marked = mark_run_overrides(argv, OWN)
    assert marked == ["eval.py", "run=x", "split=val", "+data.split_index=3", "++data.extra=1", "-m", "--cfg",
                      "job", "hydra.verbose=true"]
    assert run_overrides(["run=x", "split=val", "+data.split_index=3", "++data.extra=1"], OWN) == [
        "data.split_index=3", "+data.extra=1"]


def test_a_config_group_swap_is_refused_naming_the_way_out():
    with pytest.raises(AistudioError, match=r"model=resnet50: the run's own model config is used.*model.<key>"):
        mark_run_overrides(["eval.py", "model=resnet50"], OWN)


def test_apply_overrides_parses_values_and_refuses_unknown_keys():
    config = {"data": {"split_index": 0, "project": {"_target_": "x"}}, "seed": 1}
    changed = apply_overrides(config, ["data.split_index=3", "data.project=/other", "+data.extra=[1,2]"])
    assert changed["data"] == {"split_index": 3, "project": "/other", "extra": [1, 2]}
    assert config["data"]["split_index"] == 0  # the run's own config is left as it was
    with pytest.raises(AistudioError, match=r"data.split_idx=1: the run's config.json has no key data.split_idx "
                                            r"\(keys there: project, split_index\).*\+data.split_idx=1"):
        apply_overrides(config, ["data.split_idx=1"])
    with pytest.raises(AistudioError, match="seed is not a section"):
        apply_overrides(config, ["seed.x=1"])


def test_per_class_figures_from_a_confusion_matrix():
    matrix = torch.tensor([[3, 1, 0], [0, 2, 0], [1, 0, 0]])  # rows: true, columns: predicted
    report = classification_report(matrix, ["a", "b", "c"])
    assert report["a"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    assert report["b"]["precision"] == pytest.approx(2 / 3) and report["b"]["recall"] == 1.0
    assert report["c"] == {"precision": None, "recall": 0.0, "f1": None, "support": 1}  # never predicted
    iou = segmentation_report(torch.tensor([[5, 1, 0], [1, 3, 0], [0, 0, 0]]), ["bg", "fg", "none"])
    assert iou["bg"]["iou"] == pytest.approx(5 / 7) and iou["fg"]["dice"] == pytest.approx(6 / 8)
    assert iou["none"] == {"iou": None, "dice": None, "pixels": 0}  # absent from both: no score, not 0


# -- a real run, evaluated as users do ------------------------------------------------------------
@pytest.mark.slow
def test_eval_reproduces_the_recorded_test_with_per_class_figures(tiny_classifier_run):
    tmp, project, run_dir = tiny_classifier_run
    evaluation = assert_eval_reproduces_test(run_dir, tmp)
    matrix = torch.tensor(evaluation["confusion_matrix"])
    assert list(evaluation["per_class"]) == ["red", "green", "blue"] and int(matrix.sum()) == 6  # 2 test images each
    assert evaluation["metrics"]["test_acc"] == pytest.approx(float(matrix.diagonal().sum() / matrix.sum()))
    for i, figures in enumerate(evaluation["per_class"].values()):
        assert figures["support"] == int(matrix[i].sum())
    dataset = evaluation["dataset"]
    assert dataset["sha256"] == hashlib.sha256((project / "dataset.json").read_bytes()).hexdigest()
    assert (dataset["split_index"], dataset["images"], evaluation["split"]) == (0, 6, "test")
    assert (run_dir / "eval" / "eval.log").is_file()


@pytest.mark.slow
def test_a_data_override_changes_the_split_it_reports(tiny_classifier_run):
    tmp, project, run_dir = tiny_classifier_run
    result = run_entry("eval.py", [f"run={run_dir}", "split=val", "data.split_index=1"], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((run_dir / "eval" / "val-best-data.split_index=1.json").read_text())
    entries = json.loads((project / "dataset.json").read_text())["images"]
    val_files = sorted(e["file"] for e in entries if e["split"][1] == "val")
    assert evaluation["dataset"]["split_index"] == 1 and evaluation["dataset"]["images"] == len(val_files)
    assert sorted(val_files) != sorted(e["file"] for e in entries if e["split"][0] == "val")  # another split
    assert set(evaluation["metrics"]) == {"val_loss", "val_acc", "val_f1", "val_precision", "val_recall"}
    assert sum(f["support"] for f in evaluation["per_class"].values()) == len(val_files)
    assert evaluation["overrides"] == ["data.split_index=1"] and "reproduces" not in " ".join(evaluation["notes"])
    assert "val_acc" in result.stdout and "split val" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), [
    (["data.split_idx=1"], "has no key data.split_idx"),
    (["ckpt=missing.ckpt"], "no checkpoint at missing.ckpt"),
    (["split=holdout"], "split=holdout: use one of train, val, test"),
    (["data.project=/nowhere"], "dataset folder not found"),
    (["data.project={broken}"], "2 problem(s) found, nothing was evaluated"),
])
def test_bad_input_is_one_error_and_writes_nothing(tiny_classifier_run, args, message, tmp_path):
    tmp, _, run_dir = tiny_classifier_run
    (tmp_path / "dataset.json").write_text('{"version": 1, "classes": ["red"], "images": [{"file": "a.png"}]}')
    before = sorted((run_dir / "eval").glob("*.json")) if (run_dir / "eval").is_dir() else []
    result = run_entry("eval.py", [f"run={run_dir}", *(a.format(broken=tmp_path) for a in args)], tmp)
    assert result.returncode == 1 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert (sorted((run_dir / "eval").glob("*.json")) if (run_dir / "eval").is_dir() else []) == before


def test_an_unknown_run_is_named(tmp_path):
    result = run_entry("eval.py", ["run=no-such-run"], tmp_path)
    assert result.returncode == 1 and "no run 'no-such-run'" in result.stderr and "Traceback" not in result.stderr


# -- export ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_onnx_and_torchscript_exports_match_pytorch_and_reload_in_a_fresh_process(tiny_classifier_run):
    tmp, _, run_dir = tiny_classifier_run
    onnx_record = assert_onnx_export_matches(run_dir, tmp)
    assert onnx_record["input"]["shape"] == ["batch", 3, 16, 16] and onnx_record["classes"] == ["red", "green", "blue"]
    assert onnx_record["input"]["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    result = run_entry("export.py", [f"run={run_dir}", "format=torchscript"], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    script = json.loads((run_dir / "export" / "resnet18-best.pt.json").read_text())
    assert script["format"] == "torchscript" and script["check"]["passed"]
    assert json.loads((run_dir / "export" / "resnet18-best.onnx.json").read_text())["format"] == "onnx"  # each keeps its own
    # a fresh process without aistudio: the TorchScript file and the ONNX file agree on a batch of 5
    probe = (
        "import sys, warnings, numpy as np, torch, onnxruntime as ort\n"
        "warnings.simplefilter('ignore')\n"
        "x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))\n"
        "scripted = torch.jit.load(sys.argv[1])(x).detach().numpy()\n"
        "session = ort.InferenceSession(sys.argv[2], providers=['CPUExecutionProvider'])\n"
        "exported = session.run(None, {'images': x.numpy()})[0]\n"
        "print(scripted.shape, float(np.abs(scripted - exported).max()))\n")
    check = subprocess.run([sys.executable, "-c", probe, str(run_dir / "export" / "resnet18-best.pt"),
                            str(run_dir / "export" / "resnet18-best.onnx")], capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]
    shape, difference = check.stdout.rsplit(")", 1)
    assert shape == "(5, 3" and float(difference) < 1e-3  # the two runtimes, float32 kernels


def test_export_format_is_checked_before_anything_is_built(tmp_path):
    result = run_entry("export.py", ["run=no-such-run", "format=tflite"], tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "no run 'no-such-run'" in result.stderr


# -- pictures ---------------------------------------------------------------------------------------
def test_the_plots_added_after_the_run_leave_no_tensorboard_writer_open(tmp_path):
    # the Trainer closes its SummaryWriter when a run ends; the plots written after it re-open one (a new
    # event file and writer thread), which must be closed again: a sweep's process runs many jobs
    import threading

    import cv2
    import numpy as np
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from aistudio.evaluation.plotting import log_to_tensorboard

    def writer_threads() -> int:
        return sum(type(t).__name__ == "_AsyncWriterThread" and t.is_alive() for t in threading.enumerate())

    before = writer_threads()
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    logger.log_metrics({"val_acc": 0.5}, step=1)
    logger.finalize("success")
    assert writer_threads() == before
    cv2.imwrite(str(tmp_path / "curves.png"), np.full((8, 8, 3), 200, np.uint8))
    log_to_tensorboard([logger], {"curves": tmp_path / "curves.png"}, 1, {"model": "resnet18"},
                       {"val_acc": 0.5}, {"best_val_acc": 0.5})
    assert writer_threads() == before
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert "plots/curves" in events.Tags()["images"] and events.Scalars("best_val_acc")[-1].value == 0.5


@pytest.mark.slow
def test_a_finished_run_has_plots_and_tensorboard_images_with_an_hparams_entry(tiny_classifier_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, _, run_dir = tiny_classifier_run
    names = {"training_curves", "test_confusion_matrix", "test_examples"}
    assert all(is_png(run_dir / "plots" / f"{name}.png") for name in names)
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"plots/training_curves", "plots/confusion_matrix", "plots/examples"} <= set(events.Tags()["images"])
    image = events.Images("plots/confusion_matrix")[-1]
    assert image.width > 100 and image.encoded_image_string.startswith(b"\x89PNG")
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["trainer.max_epochs"].number_value == 2 and start.hparams["model"].string_value == "resnet18"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    record = json.loads((run_dir / "run.json").read_text())
    assert metrics == {"best_val_acc", *record["test_metrics"]}  # the same names as metrics.json / run.json
    best = events.Scalars("best_val_acc")[-1].value
    assert best == pytest.approx(record["best"]["value"])
