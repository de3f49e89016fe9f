"""Runs by id: any run directory under the runs root, single runs and sweep jobs alike.

A run is addressed by the ``id`` in its run.json (never by a path), found through the run catalog
(:mod:`aistudio.runs.catalog`), and only when the directory and its run.json resolve inside the runs root:
a symlink out of it is not a run of this server. Ids seen are remembered, so a lookup reads one run.json
instead of walking the tree.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from aistudio.run_layout import RUN_FILE
from aistudio.runs.atomic import read_json
from aistudio.runs.catalog import load_runs
from aistudio.server.errors import not_found
from aistudio.server.safety import check_id, inside


class RunIndex:
    def __init__(self, root: Path):
        self.root = root
        self._dirs: dict[str, Path] = {}
        self._lock = threading.Lock()

    def remember(self, run_id: str, run_dir: Path) -> None:
        with self._lock:
            self._dirs[run_id] = run_dir

    def _safe(self, run_dir: Path) -> bool:
        return inside(run_dir, self.root) and inside(run_dir / RUN_FILE, self.root)

    def runs(self) -> list[tuple[Path, dict[str, Any]]]:
        """(directory, run.json) of every run under the root, oldest first; refreshes the index."""
        found = [(d, data) for d, data in load_runs(self.root) if self._safe(d)]
        with self._lock:
            self._dirs = {str(data.get("id")): d for d, data in reversed(found) if data.get("id")}
        return found

    def find(self, run_id: str) -> tuple[Path, dict[str, Any]]:
        """The run's directory and run.json; 422 for a malformed id, 404 for an unknown one."""
        check_id("run", run_id)
        with self._lock:
            known = self._dirs.get(run_id)
        data = self._read(known, run_id) if known else None
        if data is None:
            self.runs()
            with self._lock:
                known = self._dirs.get(run_id)
            data = self._read(known, run_id) if known else None
        if data is None or known is None:
            raise not_found("run", run_id)
        return known, data

    def _read(self, run_dir: Path, run_id: str) -> dict[str, Any] | None:
        try:
            data = read_json(run_dir / RUN_FILE)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("id") == run_id and self._safe(run_dir) else None
