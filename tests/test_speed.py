"""Speed knobs take effect: hardware.channels_last / compile / matmul_precision, trainer.benchmark,
bf16-mixed on CPU, the weight EMA (callbacks.ema), and the DataLoader's workers settings."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from aistudio import AistudioError
from aistudio.cpus import cpu_budget
from aistudio.data.datamodule import ProjectDataModule, default_num_workers
from aistudio.runs.record import load_run
from aistudio.training.hardware import resolve_hardware
from aistudio.training.speed import SpeedSettings
from tests.helpers import assert_eval_reproduces_test, run_train


def test_hardware_speed_settings_are_resolved_and_checked():
    resolved = resolve_hardware("cpu", channels_last=True, compile=True, matmul_precision="highest")
    assert resolved["speed"] == {"channels_last": True, "compile": "default", "matmul_precision": "highest"}
    assert resolve_hardware("cpu", compile="max-autotune")["speed"]["compile"] == "max-autotune"
    assert resolve_hardware("cpu")["speed"] == {"channels_last": False, "compile": None, "matmul_precision": "high"}
    with pytest.raises(AistudioError, match="hardware.compile=fast: use false, true or a torch.compile mode"):
        resolve_hardware("cpu", compile="fast")
    with pytest.raises(AistudioError, match="hardware.matmul_precision=low: use one of highest, high, medium"):
        resolve_hardware("cpu", matmul_precision="low")


def test_compile_is_in_place_so_checkpoints_keep_the_plain_model_keys():
    from aistudio.tasks.classification import ClassificationModule

    model = {"_target_": "aistudio.models.classification.build_classifier", "name": "resnet18", "num_classes": 3,
             "weights": None}
    module = ClassificationModule(model, {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1})
    keys = list(module.state_dict())
    before = torch.get_float32_matmul_precision()
    try:
        settings = SpeedSettings(channels_last=True, compile="default", matmul_precision="medium")
        trainer = SimpleNamespace(datamodule=SimpleNamespace(channels_last_batches=False, pixel_scaling=None),
                                  num_devices=1)
        settings.setup(trainer, module, "fit")  # type: ignore[arg-type]
        assert module.model._compiled_call_impl is not None and list(module.state_dict()) == keys
        assert module.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        assert trainer.datamodule.channels_last_batches  # batches normalised on the device arrive NHWC too
        assert settings.applied["channels_last"] and settings.applied["compile"] == "default"
        assert torch.get_float32_matmul_precision() == "medium" and settings.applied["cudnn_tf32"]
        SpeedSettings(matmul_precision="highest").setup(trainer, module, "fit")  # type: ignore[arg-type]
        assert not torch.backends.cudnn.allow_tf32  # full float32 convolutions too
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.cudnn.allow_tf32 = True


def test_dataloader_worker_settings_reach_the_loader(color_project):
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    from aistudio.data.classification import ClassificationDataset

    def loader(**kwargs):
        pipeline = A.Compose([A.Resize(16, 16), A.Normalize(), ToTensorV2()])
        return ProjectDataModule(color_project, dataset=ClassificationDataset, batch_size=4, num_workers=1,
                                 eval_transform=pipeline, **kwargs).val_dataloader()

    assert (loader().persistent_workers, loader().prefetch_factor) == (True, 2)
    chosen = loader(persistent_workers=False, prefetch_factor=4)
    assert (chosen.persistent_workers, chosen.prefetch_factor) == (False, 4)
    with pytest.raises(AistudioError, match="data.prefetch_factor=0"):
        loader(prefetch_factor=0)


WORKERS_AFTER_OPENCV = """
import sys
import albumentations as A, cv2, numpy as np
from albumentations.pytorch import ToTensorV2
from aistudio.data.classification import ClassificationDataset
from aistudio.data.datamodule import ProjectDataModule

image = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
for _ in range(3):  # this process's OpenCV thread pool is running (as after a run's plots)
    cv2.GaussianBlur(image, (9, 9), 0)
pipeline = A.Compose([A.Resize(16, 16), A.Blur(p=1.0), A.Normalize(), ToTensorV2()])
module = ProjectDataModule(sys.argv[1], dataset=ClassificationDataset, batch_size=4, num_workers=2,
                           train_transform=pipeline, eval_transform=pipeline, persistent_workers=False)
for _ in range(2):  # a new set of workers each time, forked from a process whose OpenCV pool ran
    batches = sum(1 for _ in module.val_dataloader())
print("batches", batches, "threads", cv2.getNumThreads())
"""


def test_workers_forked_after_opencv_ran_in_the_main_process_do_not_hang(color_project):
    """Workers keep OpenCV to one thread (set before they fork: set inside a worker forked after the
    parent's OpenCV pool ran, ``cv2.setNumThreads`` hung it)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WORKERS_AFTER_OPENCV, str(color_project)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "threads 1" in done.stdout and "batches 0" not in done.stdout


@pytest.mark.slow
def test_the_training_datamodule_holds_plain_lists_not_omegaconf_ones(compose_cfg, color_project):
    """albumentations walks Compose.transforms on every sample: as a ListConfig that cost ~0.1 ms an image."""
    from omegaconf import OmegaConf

    from aistudio.data.project import project_from_config
    from aistudio.training.fit import build_datamodule

    cfg = compose_cfg("data=project", f"data.project={color_project}", "augmentation=default")
    config = {"data": OmegaConf.to_container(cfg.data, resolve=True)}
    datamodule = build_datamodule(config, project_from_config(config["data"]))
    assert type(datamodule.train_transform.transforms) is list and type(datamodule.eval_transform.transforms) is list
    assert type(datamodule.mean) is list and type(datamodule.std) is list


def test_hydra_shares_the_config_store_instead_of_copying_it():
    """``train.py --help`` lists every config group, and Hydra 1.3 deep-copied the ConfigStore for each."""
    import copy

    from hydra.core.config_store import ConfigStore

    from aistudio.config import register_resolvers

    register_resolvers()
    assert copy.deepcopy(ConfigStore.instance()) is ConfigStore.instance()


def test_a_run_with_every_speed_knob_records_them_and_its_ema_checkpoint_evaluates_the_same(tmp_path, color_project):
    run_dir = tmp_path / "run"
    result = run_train(["data=project", f"data.project={color_project}", "hardware=cpu", "data.image_size=32",
                        "data.batch_size=8", "model=resnet18", "callbacks.progress_bar.kind=none", "plots=false",
                        "trainer.max_epochs=2", "hardware.precision=bf16-mixed", "hardware.channels_last=true",
                        "hardware.matmul_precision=highest", "trainer.benchmark=true", "callbacks.ema.decay=0.5",
                        "data.prefetch_factor=3", f"hydra.run.dir={run_dir}"], tmp_path)  # default workers on
    assert result.returncode == 0, result.stderr[-3000:]
    record = load_run(run_dir)
    assert record["status"] == "completed"
    assert record["speed"] == {"channels_last": True, "compile": None, "matmul_precision": "highest",
                               "cudnn_benchmark": True, "cudnn_tf32": False, "normalize_on_device": True,
                               "reuse_batch_memory": True, "num_workers": default_num_workers(),
                               "cpus": {**cpu_budget().as_record(), "torch_threads": record["speed"]["cpus"]["torch_threads"]}}
    assert 1 <= record["speed"]["cpus"]["torch_threads"] <= cpu_budget().cpus
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    averaged, live = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert "averaging_state" in checkpoint and set(averaged) == set(live)
    assert not torch.equal(averaged["model.fc.weight"], live["model.fc.weight"])  # the average is what is saved
    assert_eval_reproduces_test(run_dir, tmp_path)  # tested with the averaged weights, as eval.py loads them


@pytest.mark.parametrize(("world_size", "dropped"), [(1, False), (2, True)])
def test_a_last_training_batch_of_one_image_is_dropped_per_rank(color_project, world_size, dropped):
    """24 training images in batches of 11: one process ends with 2 images, each of 2 DDP processes with 12 =
    11 + a batch of one, which BatchNorm cannot train on."""
    from lightning.pytorch.trainer.states import TrainerStatus

    from aistudio.data.classification import ClassificationDataset

    datamodule = ProjectDataModule(color_project, dataset=ClassificationDataset, batch_size=11, num_workers=0)
    datamodule.trainer = SimpleNamespace(world_size=world_size, num_devices=world_size,
                                         state=SimpleNamespace(status=TrainerStatus.RUNNING))
    loader = datamodule.train_dataloader()
    assert loader.drop_last is dropped
