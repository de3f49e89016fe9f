from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# the files that take minutes, started first so that the test workers end together (pytest-xdist hands out
# whole files in collection order: addopts has --dist loadfile --no-loadscope-reorder)
LONGEST_FIRST = ("test_lifecycle.py", "test_sweeps.py", "test_refusals_and_failures.py", "test_predict.py")
MAX_AUTO_WORKERS = 4  # every worker runs trainings of up to ~2 GB; more rarely pays on one machine


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist, each worker and the train.py runs it starts get their share of the cores as
    OpenMP threads. Two trainings each with as many threads as cores make threads wait at OpenMP barriers
    for a peer that is not scheduled, which slowed the run-lifecycle tests 2.6-fold (measured on 2 cores).
    Users' runs are untouched: a set ``OMP_NUM_THREADS`` wins, and the framework never raises it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))


_share_the_cores_between_workers()

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from aistudio.config import register_resolvers  # noqa: E402
from tests.helpers import CONF, make_color_project, run_train  # noqa: E402


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core this process may use, at most MAX_AUTO_WORKERS."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The LONGEST_FIRST files first, in that order; the rest keep theirs (a stable sort)."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


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
