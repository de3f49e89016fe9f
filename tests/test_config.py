"""Every option of every config group composes and instantiates into the real object."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from aistudio import AistudioError, user_error
from aistudio.training.schedulers import build_scheduler
from tests.helpers import CONF, ROOT, run_train


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_its_options():
    assert {"resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
            "convnext_tiny", "vit_b_16", "torchvision"} <= set(options("model"))
    assert set(options("optimizer")) == {"sgd", "adam", "adamw"}
    assert set(options("scheduler")) == {"none", "cosine", "step", "onecycle", "plateau"}
    assert {"none", "light", "default", "heavy"} <= set(options("augmentation"))
    assert {"cpu", "gpu", "auto"} <= set(options("hardware"))
    assert {"tensorboard", "csv", "mlflow"} <= set(options("logger"))
    assert {"fast_dev_run", "overfit", "limit"} <= set(options("debug"))
    assert "digits_resnet18" in options("experiment")


@pytest.mark.parametrize("name", [m for m in options("model") if not m.startswith(("torchvision", "timm"))])
def test_model_builds_and_runs(compose_cfg, name):
    cfg = compose_cfg(f"model={name}")
    segmentation = cfg.model._target_.endswith("build_segmenter")
    if not (segmentation or cfg.model._target_.endswith("build_classifier")):
        pytest.skip(f"{cfg.model._target_} models are checked by their task's tests (test_detection.py)")
    model = instantiate(cfg.model, num_classes=4)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, cfg.data.image_size, cfg.data.image_size))
    size = cfg.data.image_size
    assert out["out"].shape == (2, 4, size, size) if segmentation else out.shape == (2, 4)
    if name.startswith("mobilenet_v3"):  # torchvision's 0.01 leaves a short run's eval statistics unconverged
        assert {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}


def test_any_torchvision_model_by_name(compose_cfg):
    cfg = compose_cfg("model=torchvision", "model.name=regnet_x_400mf", "data.channels=1")
    model = instantiate(cfg.model, num_classes=3)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_unknown_torchvision_model_suggests_names(compose_cfg):
    cfg = compose_cfg("model=torchvision", "model.name=resnet181")
    with pytest.raises(Exception) as info:
        instantiate(cfg.model, num_classes=3)
    assert "Did you mean: resnet18" in str(user_error(info.value))


@pytest.mark.parametrize("name", options("optimizer"))
def test_optimizer_instantiates(compose_cfg, name):
    cfg = compose_cfg(f"optimizer={name}", "optimizer.lr=0.123")
    optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(optimizer, torch.optim.Optimizer) and optimizer.param_groups[0]["lr"] == 0.123


@pytest.mark.parametrize("name", options("scheduler"))
def test_scheduler_instantiates_and_steps(compose_cfg, name):
    cfg = compose_cfg(f"scheduler={name}")
    parameter = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    if not cfg.scheduler.scheduler:
        assert name == "none"
        return
    runtime = {"total_steps": 50, "steps_per_epoch": 10, "max_epochs": 5, "max_lr": [0.1]}
    scheduler = build_scheduler(instantiate(cfg.scheduler.scheduler), optimizer, runtime)
    assert cfg.scheduler.interval in ("step", "epoch")
    for _ in range(50 if cfg.scheduler.interval == "step" else 12):
        optimizer.step()
        scheduler.step(1.0) if name == "plateau" else scheduler.step()
    assert optimizer.param_groups[0]["lr"] < 0.1


def test_cosine_warms_up_then_decays():
    from aistudio.training.schedulers import warmup_cosine

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps=100, steps_per_epoch=10, warmup_epochs=1, min_lr_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(1.0) and lrs.index(1.0) == 10
    assert lrs[-1] == pytest.approx(0.1, abs=0.01) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


@pytest.mark.parametrize("name", options("augmentation"))
def test_augmentation_pipelines_give_normalised_tensors(compose_cfg, name):
    cfg = compose_cfg(f"augmentation={name}", "data=project", "data.project=unused", "data.image_size=48")
    image = np.random.default_rng(0).integers(0, 256, (60, 40, 3), dtype=np.uint8)
    # detection pipelines carry boxes and leave resizing/normalising to the model (0-1 floats, own size)
    inputs = {"bboxes": [[2, 3, 10, 12]], "labels": [1], "ids": [0]} if name.startswith("detection") else {}
    size = (3, 60, 40) if name.startswith("detection") else (3, 48, 48)
    for stage in ("train", "eval"):
        out = instantiate(cfg.augmentation[stage])(image=image, **inputs)["image"]
        assert isinstance(out, torch.Tensor) and out.shape == size and out.dtype == torch.float32
    evaluated = instantiate(cfg.augmentation.eval)
    assert torch.equal(evaluated(image=image, **inputs)["image"], evaluated(image=image, **inputs)["image"])


def test_hardware_options_resolve(compose_cfg):
    assert instantiate(compose_cfg("hardware=cpu").hardware) == {
        "accelerator": "cpu", "devices": 1, "strategy": "auto", "num_nodes": 1, "precision": "32-true",
        "speed": {"channels_last": False, "compile": None, "matmul_precision": "high"}}
    auto = instantiate(compose_cfg("hardware=auto").hardware)
    assert auto["accelerator"] == ("gpu" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        for overrides, message in ((["hardware=gpu"], "no CUDA GPU is visible"),
                                   (["hardware=cpu", "hardware.precision=16-mixed"], "needs a GPU")):
            with pytest.raises(Exception) as info:
                instantiate(compose_cfg(*overrides).hardware)
            assert message in str(user_error(info.value))


def test_multi_gpu_selection_means_ddp(monkeypatch):
    from aistudio.training import hardware

    monkeypatch.setattr(hardware, "_visible_gpus", lambda: 4)
    resolved = hardware.resolve_hardware([1, 3], precision="bf16-mixed")
    assert resolved["devices"] == [1, 3] and resolved["strategy"] == "ddp" and resolved["accelerator"] == "gpu"
    with pytest.raises(AistudioError, match=r"GPU\(s\) \[5\] do not exist"):
        hardware.resolve_hardware([0, 5])


@pytest.mark.parametrize("name", options("logger"))
def test_loggers_instantiate(compose_cfg, tmp_path, name, monkeypatch):
    from lightning.pytorch.loggers import Logger

    from aistudio.training.trainer import instantiate_all

    monkeypatch.setenv("AISTUDIO_RUNS_DIR", str(tmp_path / "runs"))
    cfg = compose_cfg(f"logger={name}")
    loggers = instantiate_all(cfg.get("logger"))
    assert all(isinstance(logger, Logger) for logger in loggers)
    assert len(loggers) == (0 if name == "none" else 1)


def test_loggers_combine(compose_cfg):
    cfg = compose_cfg("logger=[tensorboard,csv]")
    assert set(cfg.logger) == {"tensorboard", "csv"}


def test_callbacks_and_trainer_instantiate(compose_cfg, tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    from aistudio.training.callbacks import RunDirectoryCallback
    from aistudio.training.checkpoint import AtomicCheckpointIO
    from aistudio.training.trainer import build_trainer, instantiate_all

    cfg = compose_cfg("hardware=cpu", "callbacks.early_stopping.patience=3")
    built = instantiate_all(cfg.callbacks)
    for kind in (ModelCheckpoint, EarlyStopping, LearningRateMonitor):
        assert any(isinstance(c, kind) for c in built), kind
    checkpoint = next(c for c in built if isinstance(c, ModelCheckpoint))
    assert (checkpoint.monitor, checkpoint.mode) == ("val_acc", "max")
    trainer = build_trainer(cfg, RunDirectoryCallback(tmp_path, None, "val_acc", "max"))
    assert trainer.max_epochs == cfg.trainer.max_epochs
    # checkpoint_io.background=auto: on the CPU the file is written in line (a writer thread would take the
    # training threads' cores) and only its fsync + rename wait in the background
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert cfg.checkpoint_io.background == "auto" and trainer.strategy.checkpoint_io.mode == "commit_behind"
    forced = compose_cfg("hardware=cpu", "checkpoint_io.background=true")
    assert build_trainer(forced, RunDirectoryCallback(tmp_path, None, "val_acc", "max")).strategy.checkpoint_io.background
    assert next(c for c in trainer.callbacks if isinstance(c, EarlyStopping)).patience == 3


def test_checkpoint_writes_go_to_the_background_only_where_an_accelerator_trains():
    from aistudio.training.checkpoint import write_mode

    assert write_mode("auto", "gpu") == "background" and write_mode("auto", "cpu") == "commit_behind"
    assert write_mode(True, "cpu") == "background" and write_mode(False, "gpu") == "in_line"
    with pytest.raises(AistudioError, match="checkpoint_io.background='sometimes' is not a choice"):
        write_mode("sometimes", "gpu")


@pytest.mark.parametrize("name", options("debug"))
def test_debug_modes_compose(compose_cfg, name):
    cfg = compose_cfg(f"debug={name}")
    trainer = cfg.trainer
    assert trainer.fast_dev_run or trainer.overfit_batches or trainer.limit_train_batches


def test_experiment_recipe(compose_cfg):
    cfg = compose_cfg("experiment=digits_resnet18")
    assert cfg.model.name == "resnet18" and cfg.trainer.max_epochs == 15
    overridden = compose_cfg("experiment=digits_resnet18", "model=mobilenet_v3_small")
    assert overridden.model.name == "mobilenet_v3_small"


def test_task_module_instantiates(compose_cfg):
    cfg = compose_cfg()
    config = OmegaConf.to_container(cfg, resolve=True)
    module = instantiate(cfg.task.module, model={**config["model"], "num_classes": 10},
                         optimizer=config["optimizer"], scheduler=config["scheduler"],
                         _recursive_=False, _convert_="all")
    assert module(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_data_options(compose_cfg, color_project):
    digits = instantiate(compose_cfg("data=digits").data)
    assert digits.num_classes == 10 and digits.image_size == 32 and digits.horizontal_flip == 0.0
    user = instantiate(compose_cfg("data=project", f"data.project={color_project}").data)
    assert user.class_names == ["red", "green", "blue"]


@pytest.mark.slow
def test_config_only_commands_are_fast_and_do_not_import_torch():
    code = ("import runpy, sys; sys.argv=['train.py','--cfg','job']; "
            "import contextlib, io\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: runpy.run_path('train.py', run_name='__main__')\n"
            "    except SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'lightning', 'torchvision', 'albumentations') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


@pytest.mark.slow
def test_unknown_choice_lists_valid_options():
    result = subprocess.run([sys.executable, "train.py", "model=resnet999"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "Could not find 'model/resnet999'" in result.stderr and "resnet18" in result.stderr


@pytest.mark.parametrize(("name", "task", "model"), [
    ("bccd", "detection", "fasterrcnn_mobilenet_v3_large_320_fpn"),
    ("membrane", "semantic_segmentation", None),
    ("shapes_segmentation", "semantic_segmentation", "lraspp_mobilenet_v3_large"),
    ("shapes_detection", "detection", "fasterrcnn_mobilenet_v3_large_320_fpn"),
])
def test_task_recipes_compose(compose_cfg, name, task, model):
    cfg = compose_cfg(f"experiment={name}")
    assert cfg.task.name == task and (model is None or cfg.model.name == model)
    assert cfg.optimizer._target_.startswith("torch.optim.")


def test_a_task_picks_its_defaults_and_the_command_line_still_wins(compose_cfg):
    cfg = compose_cfg("task=detection")
    assert cfg.model.name == "fasterrcnn_mobilenet_v3_large_320_fpn" and cfg.data.project.task == "detection"
    assert list(cfg.augmentation.train.bbox_params.label_fields) == ["labels", "ids"]
    cfg = compose_cfg("task=detection", "model=retinanet_resnet50_fpn_v2")
    assert cfg.model.name == "retinanet_resnet50_fpn_v2"


def shipped_choices() -> list[list[str]]:
    """Every option of the groups the config checks look at, and every recipe that composes alone."""
    choices = [[f"{group}={path.stem}"] for group in ("optimizer", "scheduler", "model", "augmentation", "data",
                                                      "hardware", "logger", "debug", "task")
               for path in sorted((CONF / group).glob("*.yaml")) if path.stem not in ("torchvision",
                                                                                       "torchvision_detection",
                                                                                       "torchvision_segmentation",
                                                                                       "timm")]
    tasks = {"fasterrcnn": "detection", "retinanet": "detection", "fcos": "detection", "ssdlite": "detection",
             "maskrcnn": "instance_segmentation", "deeplabv3": "semantic_segmentation",
             "lraspp": "semantic_segmentation", "fcn": "semantic_segmentation"}
    for choice in choices:
        family = next((task for prefix, task in tasks.items() if choice[0].startswith(f"model={prefix}")), None)
        if family:
            choice.insert(0, f"task={family}")
    return choices + [[f"experiment={path.stem}"] for path in sorted((CONF / "experiment").glob("*.yaml"))] + [
        ["hparams_search=optuna"], ["hardware.precision=16", "hardware.selected_devices=[0]"]] + (
        [["model=timm", "model.name=resnet10t"]] if importlib.util.find_spec("timm") else [])


@pytest.mark.parametrize("overrides", shipped_choices(), ids=lambda o: " ".join(o))
def test_every_shipped_config_passes_the_early_config_checks(compose_cfg, overrides):
    """The checks that reject typos before anything is built must never reject what we ship."""
    from aistudio.training.config_checks import check_config

    cfg = compose_cfg(*overrides)
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    check_config(config)


@pytest.mark.parametrize("override, says", [
    ("trainer.max_epochs=three", "trainer.max_epochs='three': Trainer takes an integer"),
    ("data.batch_size=abc", "data.batch_size='abc': ProjectDataModule takes an integer"),
    ("optimizer.lr=fast", "optimizer.lr='fast': SGD takes a number"),
    ("hardware.precision=17", "hardware.precision=17: resolve_hardware takes one of '32-true'"),
])
def test_a_wrongly_typed_value_names_the_key_and_the_type(compose_cfg, override, says):
    from aistudio.training.config_checks import check_types

    config = OmegaConf.to_container(compose_cfg(override), resolve=True)
    config.pop("hydra", None)
    with pytest.raises(AistudioError) as refused:
        check_types(config)
    assert str(refused.value).startswith(says) and "— fix" in str(refused.value)


def test_a_wrongly_typed_value_is_one_line_and_makes_no_run_directory(tmp_path):
    """What train.py makes of the type errors above (each worded as the test above checks)."""
    run_dir = tmp_path / "run"
    result = run_train(["trainer.max_epochs=three", f"hydra.run.dir={run_dir}"], tmp_path, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: trainer.max_epochs='three': Trainer takes an integer") \
        and "— fix" in lines[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and not run_dir.exists()


def test_type_checks_know_common_annotations():
    import os
    from typing import Literal, Optional, Union

    from aistudio.training.config_checks import _matches

    assert _matches(3, int) and not _matches(True, int) and not _matches("3", int) and _matches(None, int)
    assert _matches(3, float) and _matches(0.5, Optional[float]) and not _matches("x", Union[float, int])  # noqa: UP007, UP045 - the typing forms libraries use
    assert _matches([1, 2], list[int]) and not _matches(5, list[int]) and _matches({"a": 1}, dict[str, int])
    assert _matches(16, Literal["16", "32"]) and not _matches("17", Literal["16", "32"])
    assert _matches({"_target_": "x.Y"}, int)  # instantiated before the call: not the config's business
    assert _matches("/some/path", os.PathLike) and not _matches(1, bool)


def test_one_device_rule_for_trainer_slurm_and_lock(monkeypatch, tmp_path):
    """auto and its explicit equivalent are the same devices for the Trainer, SLURM and the lock."""
    from aistudio.devices import DeviceSet, gpus_per_node, processes_per_node, resolve_devices
    from aistudio.runs.lock import RunLock, device_set

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert resolve_devices("auto", visible=0) == resolve_devices("cpu") == DeviceSet("cpu", (), 1)
    assert resolve_devices("auto", visible=2) == resolve_devices([0, 1], visible=2) == resolve_devices(2, visible=2)
    assert resolve_devices("auto", visible=2).key == "gpu:0,1" and resolve_devices("cpu", 2).key == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")  # visible GPU 0 is physical GPU 3
    assert resolve_devices([0], visible=2).key == "gpu:3" and resolve_devices("auto", visible=2).key == "gpu:1,3"
    with pytest.raises(AistudioError, match=r"GPU\(s\) \[2\] do not exist"):
        resolve_devices([0, 2], visible=2)
    with pytest.raises(AistudioError, match="hardware.selected_devices='gpus' — use cpu, auto"):
        resolve_devices("gpus")
    assert (processes_per_node([0, 1]), gpus_per_node([0, 1])) == (2, 2)
    assert (processes_per_node("cpu", 2), gpus_per_node("cpu"), processes_per_node("auto")) == (2, None, 1)

    # the lock: on this machine (no GPU here) cpu, auto and cpu_ddp are one device set
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    if torch.cuda.is_available():
        pytest.skip("the CPU lock case needs a machine without GPUs")
    keys = {device_set({"selected_devices": s, "cpu_processes": p}) for s, p in (("auto", 1), ("cpu", 1), ("cpu", 2))}
    assert keys == {"cpu"}
    held = RunLock(str(tmp_path), device_set({"selected_devices": "auto"}), lock_dir=tmp_path / "locks")
    held.acquire(tmp_path / "run-a", "a")
    try:
        with pytest.raises(AistudioError, match="another training run is active"):
            RunLock(str(tmp_path), device_set({"selected_devices": "cpu"}), lock_dir=tmp_path / "locks").acquire(
                tmp_path / "run-b", "b")
    finally:
        held.release()


@pytest.mark.parametrize("overrides, tasks, gpus", [
    (["hardware=cpu"], 1, None), (["hardware=cpu_ddp"], 2, None), (["hardware=auto"], 1, None),
    (["hardware=gpu", "hardware.selected_devices=[0,1]"], 2, 2), (["hardware=gpu", "hardware.selected_devices=3"], 3, 3),
])
def test_slurm_launcher_shape_follows_the_device_rule(compose_cfg, overrides, tasks, gpus):
    cfg = compose_cfg("hydra/launcher=slurm", *overrides)
    launcher = cfg.hydra.launcher
    assert (launcher.tasks_per_node, launcher.gpus_per_node) == (tasks, gpus)
