"""OmegaConf resolvers used by conf/ (registered by train.py before Hydra composes), the one-line config
summary, and the composed config -> the resolved dict config.json holds. No heavy imports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from aistudio import AistudioError
from aistudio.devices import gpus_per_node, processes_per_node
from aistudio.run_layout import RUN_FILE, default_runs_root


def run_dir_for(resume: str | None, default: str) -> str:
    """``hydra.run.dir``: the resumed run's own directory when ``resume`` is set, else ``default``."""
    if resume in (None, "", "null", "None"):
        return default
    path = Path(str(resume)).expanduser()
    if path.is_file():  # a checkpoint: <run>/checkpoints/last.ckpt
        path = path.parent.parent
    if not (path / RUN_FILE).is_file():
        return default  # not a run: train.py reports it (raising here would print Hydra's traceback)
    return str(path.resolve())


def optuna_direction(mode: str) -> str:
    """A task's ``mode`` (max/min) as Optuna's study direction."""
    return {"max": "maximize", "min": "minimize"}[str(mode)]


def sqlite_url(path: str) -> str:
    """``sqlite:///<absolute path>`` for a study database, creating its folder (SQLite will not)."""
    target = Path(str(path)).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{target}"


def share_config_store() -> None:
    """Make Hydra's repository copies share the one ConfigStore instead of deep-copying it.

    Hydra 1.3 deep-copies its config repository, ConfigStore (every registered structured config)
    included, each time it lists a config group: ``train.py --help`` lists them ~130 times and
    spent 0.5 s (over half its wall time) in those copies. ``ConfigStore.load`` deep-copies every node it
    hands out, so sharing the store changes no result; Hydra's main branch stopped storing the store
    on the source for the same reason (facebookresearch/hydra#2928).
    """
    from hydra.core.config_store import ConfigStore

    if "__deepcopy__" not in vars(ConfigStore):
        ConfigStore.__deepcopy__ = lambda self, memo: self  # type: ignore[attr-defined]


def register_resolvers() -> None:
    share_config_store()
    if not OmegaConf.has_resolver("aistudio_run_dir"):
        OmegaConf.register_new_resolver("aistudio_run_dir", run_dir_for)
    if not OmegaConf.has_resolver("aistudio_runs_root"):
        OmegaConf.register_new_resolver("aistudio_runs_root", lambda: str(default_runs_root()))
    if not OmegaConf.has_resolver("aistudio_devices"):
        OmegaConf.register_new_resolver("aistudio_devices", processes_per_node)
    if not OmegaConf.has_resolver("aistudio_gpus"):
        OmegaConf.register_new_resolver("aistudio_gpus", gpus_per_node)
    if not OmegaConf.has_resolver("aistudio_sqlite"):
        OmegaConf.register_new_resolver("aistudio_sqlite", sqlite_url)
    if not OmegaConf.has_resolver("aistudio_direction"):
        OmegaConf.register_new_resolver("aistudio_direction", optuna_direction)


def config_summary(config: dict[str, Any]) -> str:
    """One line of what this run trains: the values a reader checks first."""
    def pick(path: str) -> Any:
        node: Any = config
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def short(target: Any) -> str:
        return str(target).rsplit(".", 1)[-1] if target else "none"

    project = pick("data.project")
    data = short(project.get("_target_")).removesuffix("_project") if isinstance(project, dict) else project
    scheduler = pick("scheduler.scheduler._target_")
    parts = [
        f"task {pick('task.name')}",
        f"model {pick('model.name')} (weights {pick('model.weights') or 'none'})",
        f"data {data}",
        f"image {pick('data.image_size')}, batch {pick('data.batch_size')}",
        f"{short(pick('optimizer._target_'))} lr {pick('optimizer.lr')}",
        f"scheduler {short(scheduler) if scheduler else 'none'}",
        f"{pick('trainer.max_epochs')} epochs",
        f"devices {pick('hardware.selected_devices')}, precision {pick('hardware.precision')}",
        f"seed {pick('seed')}",
    ]
    return "config: " + " · ".join(parts)


def resolve_config(cfg: DictConfig) -> dict[str, Any]:
    """The frozen, fully resolved config (what config.json holds); missing values are one clear error."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or "?"
        raise AistudioError(f"config value {key} is required but not set — add {key}=... to the command line") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise AistudioError(f"config value {key} cannot be resolved: {str(err).splitlines()[0]} — "
                            f"fix it on the command line or in conf/ ({key}=...)") from None
