"""Experiments: the design notes' "experiment created, not started" — a named recipe plus overrides.

Two kinds, one shape (``id``, ``kind``, ``recipe``, ``overrides``, ``description``): the recipes in
``conf/experiment/*.yaml`` (read-only; their id is the file name) and experiments saved through the API, one
JSON file each under ``<runs root>/.experiments/`` (hidden, so the run catalog never takes it for runs).
A saved experiment may start from a recipe and adds overrides; its id cannot shadow a recipe.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from aistudio.runs.atomic import atomic_write_json, read_json
from aistudio.runs.record import utc_now
from aistudio.server.errors import ApiError, not_found
from aistudio.server.safety import check_id


def _description(recipe: Path) -> str:
    """A recipe's leading comment lines (after ``# @package``), which say what it trains."""
    lines = []
    for line in recipe.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line.lstrip("#").strip())
    return " ".join(lines)


class ExperimentStore:
    def __init__(self, recipes_dir: Path, saved_dir: Path):
        self.recipes_dir = recipes_dir
        self.saved_dir = saved_dir
        self._write = threading.Lock()  # save's "does it exist" and its write are one step

    def recipes(self) -> list[dict[str, Any]]:
        return [{"id": path.stem, "kind": "recipe", "recipe": path.stem, "overrides": [],
                 "description": _description(path), "created_at": None}
                for path in sorted(self.recipes_dir.glob("*.yaml"))]

    def is_recipe(self, experiment_id: str) -> bool:
        return (self.recipes_dir / f"{check_id('experiment', experiment_id)}.yaml").is_file()

    def saved(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.saved_dir.glob("*.json")) if self.saved_dir.is_dir() else []:
            try:
                data = read_json(path)
            except (OSError, ValueError):
                continue  # a broken file hides one experiment, never the list
            if isinstance(data, dict) and data.get("id") == path.stem:
                found.append(data)
        return found

    def all(self) -> list[dict[str, Any]]:
        return [*self.recipes(), *self.saved()]

    def _saved_path(self, experiment_id: str) -> Path:
        """The file of a saved experiment: the id cannot hold a separator or start with a dot, and a symlink
        there (which could point anywhere) is never read, written or removed."""
        path = self.saved_dir / f"{check_id('experiment', experiment_id)}.json"
        if path.is_symlink():
            raise not_found("experiment", experiment_id)
        return path

    def get(self, experiment_id: str) -> dict[str, Any]:
        if self.is_recipe(experiment_id):
            return next(r for r in self.recipes() if r["id"] == experiment_id)
        path = self._saved_path(experiment_id)
        data = read_json(path) if path.is_file() else None
        if not isinstance(data, dict):
            raise not_found("experiment", experiment_id)
        return data

    def save(self, experiment_id: str, recipe: str | None, overrides: list[str], description: str) -> dict[str, Any]:
        """Write a new saved experiment (the caller has checked and composed it); 409 when the id is taken."""
        if self.is_recipe(experiment_id):
            raise ApiError(409, "experiment exists", f"{experiment_id!r} is a recipe in conf/experiment/ — choose "
                                                     "another name", experiment=experiment_id)
        data = {"id": experiment_id, "kind": "saved", "recipe": recipe, "overrides": overrides,
                "description": description, "created_at": utc_now()}
        with self._write:
            path = self._saved_path(experiment_id)
            if path.exists():
                raise ApiError(409, "experiment exists", f"an experiment {experiment_id!r} is already saved — "
                                                         "delete it first or choose another name",
                               experiment=experiment_id)
            atomic_write_json(path, data)
        return data

    def delete(self, experiment_id: str) -> None:
        if self.is_recipe(experiment_id):
            raise ApiError(409, "read-only experiment", f"{experiment_id!r} is a recipe (conf/experiment/"
                                                        f"{experiment_id}.yaml): recipes are read-only",
                           experiment=experiment_id)
        with self._write:
            path = self._saved_path(experiment_id)
            if not path.is_file():
                raise not_found("experiment", experiment_id)
            path.unlink()
