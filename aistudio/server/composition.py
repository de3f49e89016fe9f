"""Compose an experiment's config in the server, as ``python train.py`` will, to refuse a bad override with
a 422 naming its key before any run directory or process exists.

Only Hydra and OmegaConf run here (no torch): composition catches unknown keys, unknown group options and
syntax; a value of the wrong type for a key whose default is a bool or a number (``trainer.max_epochs=three``)
is refused against that default; the data and hardware groups are resolved, which gives the project and
devices of the run's lock (:func:`aistudio.runs.lock.run_lock`, the function train.py uses). Anything
subtler is train.py's own check, and ends the run as ``failed`` with its one-line reason.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from aistudio import AistudioError
from aistudio.config import register_resolvers
from aistudio.overrides import override_key
from aistudio.runs.lock import RunLock, run_lock
from aistudio.server.errors import ApiError, invalid_override

_HYDRA = threading.Lock()  # Hydra's compose API keeps global state: one composition at a time
_FAILED_KEY = (re.compile(r"Could not override '([^']+)'"), re.compile(r"Could not find '([^'/]+)/"),
               re.compile(r"Error parsing override '([^'=]+)"), re.compile(r"Could not load '([^'/]+)/"))


@dataclass
class Composed:
    """A composed config, the lock its run will take (None: not exclusive) and a few facts for clients."""

    cfg: DictConfig
    lock: RunLock | None
    summary: dict[str, Any]


def merge_overrides(*groups: list[str]) -> list[str]:
    """One override per key, the last given winning (a run's own overrides after its experiment's)."""
    last = {override_key(o): o for group in groups for o in group}
    return [o for o in dict.fromkeys(o for group in groups for o in group) if last[override_key(o)] == o]


def task_overrides(recipe: str | None, overrides: list[str]) -> list[str]:
    """The overrides train.py gets (and records): the recipe first, so the request's own win."""
    return [*([f"experiment={recipe}"] if recipe else []), *overrides]


class Composer:
    def __init__(self, conf_dir: Path):
        self.conf_dir = Path(conf_dir).resolve()
        register_resolvers()

    def _compose(self, overrides: list[str]) -> DictConfig:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        with _HYDRA:
            GlobalHydra.instance().clear()
            try:
                with initialize_config_dir(config_dir=str(self.conf_dir), version_base="1.3"):
                    return compose("train", overrides=overrides)
            finally:
                GlobalHydra.instance().clear()

    def compose(self, recipe: str | None, overrides: list[str]) -> Composed:
        """Compose ``recipe`` + ``overrides``; an :class:`ApiError` (422) names the key that breaks it."""
        from hydra.errors import HydraException

        try:
            cfg = self._compose(task_overrides(recipe, overrides))
        except (HydraException, OmegaConfBaseException) as err:
            raise self._explain(err, recipe, overrides) from None
        self._check_types(recipe, overrides)
        try:
            OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True)
            OmegaConf.to_container(cfg.hardware, resolve=True, throw_on_missing=True)
            lock = run_lock(cfg)
        except MissingMandatoryValue as err:
            key = str(getattr(err, "full_key", None) or "?")
            raise invalid_override(key, f"{key} is required but not set — add {key}=... to the overrides") from None
        except OmegaConfBaseException as err:
            key = str(getattr(err, "full_key", None) or "?")
            raise invalid_override(key, f"{key} cannot be resolved: {str(err).splitlines()[0]}") from None
        except AistudioError as err:  # an impossible device setting
            raise invalid_override("hardware.selected_devices", str(err)) from None
        return Composed(cfg, lock, summarize(cfg))

    def _explain(self, error: Exception, recipe: str | None, overrides: list[str]) -> ApiError:
        message = str(error).split("\nConfig search path", 1)[0].strip()
        key = next((m.group(1) for pattern in _FAILED_KEY if (m := pattern.search(message))), None)
        if key is None:  # find the first override that fails on its own
            for override in overrides:
                try:
                    self._compose(task_overrides(recipe, [override]))
                except Exception:  # noqa: BLE001 - any failure names this override
                    key = override_key(override)
                    break
        if key is None and recipe:
            key = "experiment"
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        return invalid_override(key or "?", "; ".join(lines)[:800])

    def _check_types(self, recipe: str | None, overrides: list[str]) -> None:
        """A bool or number key given text (or a list) is refused against its default, which the config with
        the same group choices holds."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(overrides)
        is_choice = ["." not in o.key_or_group and (self.conf_dir / o.key_or_group).is_dir() for o in parsed]
        if all(is_choice):
            return
        base = self._compose(task_overrides(recipe, [t for t, choice in zip(overrides, is_choice) if choice]))
        for override in (o for o, choice in zip(parsed, is_choice) if not choice):
            key, value = override.key_or_group, override.value()
            try:
                default = OmegaConf.select(base, key, throw_on_resolution_failure=False)
            except OmegaConfBaseException:
                continue
            expected = _type_name(default)
            if expected and not _same_kind(value, default):
                raise invalid_override(key, f"{key}={value!r}: {key} takes {expected} (its default is {default!r})")


def _type_name(default: Any) -> str | None:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    return None


def _same_kind(value: Any, default: Any) -> bool:
    if value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summarize(cfg: DictConfig) -> dict[str, Any]:
    """What a list of experiments shows: task, model, data, optimizer, learning rate, epochs, devices."""
    def pick(key: str) -> Any:
        try:
            value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        except OmegaConfBaseException:
            return None
        if isinstance(value, DictConfig):
            target = value.get("_target_")
            return str(target).rsplit(".", 1)[-1].removesuffix("_project") if target else None
        return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)

    return {"task": pick("task.name"), "model": pick("model.name"), "data": pick("data.project"),
            "optimizer": str(pick("optimizer._target_") or "").rsplit(".", 1)[-1] or None,
            "lr": pick("optimizer.lr"), "max_epochs": pick("trainer.max_epochs"),
            "devices": pick("hardware.selected_devices")}
