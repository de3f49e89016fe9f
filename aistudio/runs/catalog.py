"""Finding runs: every run directory under a runs root, and a run by path, id or ``latest``.

Run directories are ``<root>/<date_time>`` for single runs and ``<root>/multirun/<date_time>/<n>``
for sweep jobs; anything holding a run.json within four levels counts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aistudio import AistudioError
from aistudio.run_layout import RUN_FILE, default_runs_root
from aistudio.runs.atomic import read_json
from aistudio.runs.record import effective_status

MAX_DEPTH = 4


def run_dirs(root: str | Path) -> list[Path]:
    """Run directories under ``root``, oldest first by folder name (names start with the date)."""
    root = Path(root)
    found: list[Path] = []
    if not root.is_dir():
        return found
    base = len(root.parts)
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        if RUN_FILE in files:
            found.append(here)
            subfolders[:] = []  # a run's own folders (checkpoints, tensorboard) hold no runs
            continue
        if len(here.parts) - base >= MAX_DEPTH:
            subfolders[:] = []
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
    return sorted(found)


def load_runs(root: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """(directory, run.json) pairs; unreadable files are skipped (a reader never fails on one run)."""
    runs = []
    for folder in run_dirs(root):
        try:
            data = read_json(folder / RUN_FILE)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            runs.append((folder, data))
    return runs


def find_run(reference: str, root: str | Path | None = None,
             latest_of: tuple[str, ...] = ("interrupted", "failed")) -> Path:
    """A run directory from a path (the folder or a checkpoint in it), a run id (or a unique prefix,
    or the folder name), or ``latest``: the newest run whose status is one of ``latest_of``."""
    root = Path(root) if root else default_runs_root()
    path = Path(reference).expanduser()
    if path.is_file() and path.suffix == ".ckpt":
        path = path.parent.parent
    if (path / RUN_FILE).is_file():
        return path.resolve()
    runs = load_runs(root)
    if reference == "latest":
        stopped = [(d, r) for d, r in runs if effective_status(r) in latest_of]
        if not stopped:
            raise AistudioError(f"latest: no {' or '.join(latest_of)} run under {root} — nothing to resume "
                                "(aistudio runs list shows them all)")
        return max(stopped, key=lambda item: item[1].get("created_at") or "")[0].resolve()
    exact = [d for d, r in runs if reference in (r.get("id"), d.name)]
    matches = exact or [d for d, r in runs if str(r.get("id", "")).startswith(reference)]
    if len(matches) == 1:
        return matches[0].resolve()
    if not matches:
        raise AistudioError(f"no run {reference!r}: not a run directory, and no run under {root} has that id — "
                            "list them with: aistudio runs list")
    raise AistudioError(f"run id {reference!r} is ambiguous under {root}: "
                        + ", ".join(str(d) for d in matches[:5]) + " — give more of the id")
