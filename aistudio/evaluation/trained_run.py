"""A finished run opened again: its run.json, its frozen config.json, a checkpoint of it, and the
config with a user's key overrides applied (``data.split_index=3``, ``data.project=/other``).

No torch here except where a checkpoint is read, so a wrong run reference or override is reported
before anything heavy is imported.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aistudio import AistudioError
from aistudio.data.project import DatasetError, Project, project_from_config
from aistudio.run_layout import BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT, RUN_FILE
from aistudio.runs.atomic import read_json
from aistudio.runs.catalog import find_run

CHECKPOINT_NAMES = {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}


@dataclass
class TrainedRun:
    """A run directory with its record and frozen config (what it trained, exactly)."""

    run_dir: Path
    record: dict[str, Any]
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.record.get("id") or self.run_dir.name)

    def checkpoint(self, ckpt: str) -> Path:
        """``best`` / ``last`` of this run, or a checkpoint file by path."""
        if ckpt in CHECKPOINT_NAMES:
            recorded = (self.record.get("best") or {}).get("checkpoint") if ckpt == "best" else None
            path = self.run_dir / (recorded or CHECKPOINT_NAMES[ckpt])
        else:
            path = Path(ckpt).expanduser()
        if not path.is_file():
            present = sorted(p.name for p in (self.run_dir / "checkpoints").glob("*.ckpt"))
            raise AistudioError(f"ckpt={ckpt}: no checkpoint at {path} (run {self.name} has "
                                f"{', '.join(present) or 'no checkpoints'}) — use ckpt=best, ckpt=last or a .ckpt path")
        return path.resolve()


def open_run(reference: str, root: str | Path | None = None) -> TrainedRun:
    """The run named by a directory, id, unique id prefix or ``latest`` (the newest completed run)."""
    run_dir = find_run(str(reference), root, latest_of=("completed",))
    config = read_json(run_dir / CONFIG_FILE, default=None)
    if not isinstance(config, dict):
        raise AistudioError(f"run {run_dir} has no {CONFIG_FILE}: it never started training (see its "
                            f"{RUN_FILE}), so there is nothing to rebuild — pick a run that trained")
    return TrainedRun(run_dir, read_json(run_dir / RUN_FILE, default={}) or {}, config)


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``config`` with Hydra key overrides applied (``a.b=1``, ``+a.c=2``, ``~a.d``); the values are
    parsed as on the train.py command line. A key the config lacks is refused unless added with ``+``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    result = copy.deepcopy(config)
    for override in OverridesParser.create().parse_overrides(overrides):
        parts = override.key_or_group.split(".")
        parent = _parent_node(result, parts, override.input_line, create=override.is_add())
        if override.is_delete():
            parent.pop(parts[-1], None)
        elif parts[-1] not in parent and not override.is_add():
            known = ", ".join(sorted(parent)) or "none"
            raise AistudioError(f"{override.input_line}: the run's {CONFIG_FILE} has no key {override.key_or_group} "
                                f"(keys there: {known}) — fix the name, or add it with +{override.input_line}")
        else:
            parent[parts[-1]] = override.value()
    return result


def _parent_node(config: dict[str, Any], parts: list[str], line: str, create: bool) -> dict[str, Any]:
    node = config
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            if not create or part in node:
                raise AistudioError(f"{line}: {'.'.join(parts[:-1])} is not a section of the run's {CONFIG_FILE}")
            node[part] = {}
        node = node[part]
    return node


def project_of(data_config: dict[str, Any], outcome: str) -> Project:
    """The validated project of a run's (overridden) data config; its problems are reported as what this
    program did not do (``outcome``: "nothing was evaluated"), not as training's."""
    try:
        return project_from_config(data_config)
    except DatasetError as err:
        raise err.saying(outcome) from None
