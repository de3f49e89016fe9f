from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from aistudio.config import register_resolvers  # noqa: E402
from tests.helpers import CONF, make_color_project, run_train  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One materialised-datasets cache for the whole session (digits is written once)."""
    path = tmp_path_factory.mktemp("datasets")
    os.environ["AISTUDIO_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def check_cache_dir(tmp_path_factory) -> Path:
    """The image check cache of the session (train.py subprocesses inherit it): never ~/.cache/aistudio."""
    path = tmp_path_factory.mktemp("checks")
    os.environ["AISTUDIO_CACHE_DIR"] = str(path)
    return path


@pytest.fixture()
def color_project(tmp_path) -> Path:
    return make_color_project(tmp_path / "colors")


@pytest.fixture()
def compose_cfg(tmp_path, data_dir):
    """Compose conf/train.yaml like ``python train.py`` does, with the Hydra runtime pointing at tmp."""
    register_resolvers()

    def _compose(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
        out = output_dir or tmp_path / "run"
        out.mkdir(parents=True, exist_ok=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(out)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def tiny_classifier_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(tmp, project, run dir) of one tiny classification run on the default path (DataLoader workers on,
    default callbacks and plots), trained once and shared by the eval/export/plots and predict tests."""
    tmp = tmp_path_factory.mktemp("tiny-classifier")
    project = make_color_project(tmp / "colors")
    run_dir = tmp / "run"
    result = run_train(["data=project", f"data.project={project}", "hardware=cpu", "data.image_size=16",
                        "data.batch_size=8", "model=resnet18", "trainer.max_epochs=2",
                        "callbacks.progress_bar.kind=none", f"hydra.run.dir={run_dir}"], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, project, run_dir
