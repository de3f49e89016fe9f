"""What the dashboard (``static/``) asks beyond the run API: which Run buttons are off, and a run's pictures.

- ``GET /api/dashboard/availability``: per experiment, whether a start would be refused now because its
  project's devices are taken, and by which run. The answer is the launcher's own busy check on the lock the
  experiment's run would take (its composition, cached per recipe and overrides: the lock names a project
  and a device set, which do not change while the server runs), so an experiment on another project stays
  startable while one trains.
- ``GET /api/runs/{run_id}/plots`` and ``/api/runs/{run_id}/plots/{name}``: the PNGs a run writes to ``plots/``
  when it ends (training curves, confusion matrix or PR curves, example predictions) and those eval.py adds.
  Only plain ``*.png`` files directly in ``plots/`` are listed or served: the name is checked against a
  strict pattern (no separator, no leading dot), and a symlink or a file resolving outside the run
  directory is neither listed nor served.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from aistudio.server.errors import ApiError, not_found
from aistudio.server.routes import Service
from aistudio.server.safety import inside

PLOTS_DIR = "plots"
PLOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.png")
MAX_PLOTS = 200


def _plot_files(run_dir: Path) -> list[Path]:
    folder = run_dir / PLOTS_DIR
    if folder.is_symlink() or not folder.is_dir():
        return []
    root = run_dir.resolve()
    files = [p for p in sorted(folder.iterdir()) if PLOT_NAME.fullmatch(p.name) and not p.is_symlink()
             and p.is_file() and inside(p, root)]
    return files[:MAX_PLOTS]


class Availability:
    """The lock each experiment's run would take, composed once per (recipe, overrides)."""

    def __init__(self, service: Service):
        self.service = service
        self._locks: dict[str, tuple[Any, str | None]] = {}  # key -> (RunLock | None, why unknown)
        self._mutex = threading.Lock()

    def _lock_of(self, experiment: dict[str, Any]) -> tuple[Any, str | None]:
        key = json.dumps([experiment.get("recipe"), experiment.get("overrides") or []])
        with self._mutex:
            if key in self._locks:
                return self._locks[key]
        try:
            found = (self.service.composer.compose(experiment.get("recipe"), list(experiment.get("overrides") or [])).lock,
                     None)
        except ApiError as err:  # e.g. a recipe whose data folder comes from an unset variable
            found = (None, f"{err.error}: {err.detail}")
        except Exception as err:  # noqa: BLE001 - one experiment that cannot be composed never hides the others
            found = (None, f"{type(err).__name__}: {err}")
        with self._mutex:
            self._locks[key] = found
        return found

    def of(self, experiment: dict[str, Any]) -> dict[str, Any]:
        lock, unknown = self._lock_of(experiment)
        entry: dict[str, Any] = {"experiment": experiment.get("id"), "available": True, "active_run": None,
                                 "reason": None}
        if unknown is not None:
            return {**entry, "available": None, "reason": f"cannot tell before a start ({unknown})"}
        try:
            # the check a start makes (our own runs still starting, then the lock's holder), without starting
            self.service.launcher.refuse_if_busy(lock)
        except ApiError as err:
            return {**entry, "available": False, "active_run": err.extra.get("active_run"), "reason": err.detail}
        return entry


def dashboard_routes(service: Service) -> APIRouter:
    router = APIRouter(tags=["dashboard"])
    availability = Availability(service)

    @router.get("/api/dashboard/availability")
    def run_availability() -> list[dict[str, Any]]:
        """Per experiment: ``available`` (true; false while its project's devices are taken, with the
        ``active_run`` and the ``reason`` a start would answer with; null when it cannot be told before a
        start, e.g. a recipe missing a setting)."""
        return [availability.of(e) for e in service.experiments.all()]

    @router.get("/api/runs/{run_id}/plots")
    def list_plots(run_id: str) -> dict[str, Any]:
        """The run's ``plots/*.png``: name, URL, size and modification time (changes when a plot is rewritten)."""
        run_dir, _ = service.index.find(run_id)
        plots = []
        for path in _plot_files(run_dir):
            info = path.stat()
            plots.append({"name": path.name, "url": f"/api/runs/{run_id}/plots/{path.name}", "bytes": info.st_size,
                          "modified_ns": info.st_mtime_ns})
        return {"run_id": run_id, "plots": plots}

    @router.get("/api/runs/{run_id}/plots/{name}", response_class=FileResponse,
                responses={200: {"content": {"image/png": {}}, "description": "the PNG"}})
    def get_plot(run_id: str, name: str) -> FileResponse:
        """One PNG of the run's ``plots/`` (404 when there is no such plot)."""
        if not PLOT_NAME.fullmatch(name):
            raise ApiError(422, "invalid plot name", f"{name!r} is not a plot name: letters, digits, '.', '_' "
                                                     "and '-', ending in .png", plot=name)
        run_dir, _ = service.index.find(run_id)
        path = next((p for p in _plot_files(run_dir) if p.name == name), None)
        if path is None:
            raise not_found("plot", name)
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})

    return router
