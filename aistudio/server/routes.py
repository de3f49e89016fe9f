"""The HTTP API: experiments, runs and their live stream (see README, "Service").

Handlers only translate HTTP to the service's parts (:class:`Service`); every refusal is an
:class:`~aistudio.server.errors.ApiError` turned into ``{"error", "detail"}`` JSON by the app.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Header, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from aistudio.overrides import override_key
from aistudio.run_layout import METRICS_FILE, TRAINING_LOG
from aistudio.runs.atomic import read_json
from aistudio.runs.record import STATUSES, stale_reason
from aistudio.server.composition import Composer
from aistudio.server.errors import ApiError
from aistudio.server.experiments import ExperimentStore
from aistudio.server.launcher import CONSOLE_LOG, Launcher
from aistudio.server.run_index import RunIndex
from aistudio.server.safety import MAX_OVERRIDES, OverridePolicy, check_id
from aistudio.server.settings import Settings
from aistudio.server.stream import StreamHub

MAX_LOG_LINES = 10_000


@dataclass
class Service:
    settings: Settings
    experiments: ExperimentStore
    index: RunIndex
    composer: Composer
    policy: OverridePolicy
    launcher: Launcher
    hub: StreamHub


class ExperimentIn(BaseModel):
    """A saved experiment: a name (its id), an optional recipe to start from, and overrides."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, examples=["digits-short"])
    recipe: str | None = Field(None, max_length=128, examples=["digits_resnet18"])
    overrides: list[str] = Field(default_factory=list, max_length=MAX_OVERRIDES,
                                 examples=[["trainer.max_epochs=5", "optimizer.lr=0.01"]])
    description: str = Field("", max_length=2000)


class OverridesIn(BaseModel):
    """Extra overrides for this run only (the same allow-list as saved experiments)."""

    model_config = ConfigDict(extra="forbid")
    overrides: list[str] = Field(default_factory=list, max_length=MAX_OVERRIDES)


def experiment_of(data: dict[str, Any]) -> str | None:
    """The experiment a run belongs to: recorded by the service, else the recipe in its overrides."""
    recorded = (data.get("experiment") or {}).get("id")
    if recorded:
        return str(recorded)
    return next((o.split("=", 1)[1] for o in data.get("overrides") or [] if override_key(o) == "experiment"), None)


def run_summary(service: Service, run_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    error = data.get("error") if isinstance(data.get("error"), dict) else {}
    return {"run_id": data.get("id"), "status": service.launcher.status_of(run_dir, data),
            "recorded_status": data.get("status"), "experiment": experiment_of(data), "task": data.get("task"),
            "model": data.get("model"), "epochs_completed": data.get("epochs_completed", 0), "best": data.get("best"),
            "attempt": data.get("attempt", 1), "created_at": data.get("created_at"),
            "started_at": data.get("started_at"), "ended_at": data.get("ended_at"), "duration_s": data.get("duration_s"),
            "error": (error or {}).get("message"), "dir": os.path.relpath(run_dir, service.settings.runs_root)}


def _tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a text file, read backwards in blocks (logs can be large)."""
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        data, position = b"", end
        while position > 0 and data.count(b"\n") <= lines:
            step = min(65536, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


def experiment_routes(service: Service) -> APIRouter:
    router = APIRouter(prefix="/api/experiments", tags=["experiments"])

    @router.get("")
    def list_experiments() -> list[dict[str, Any]]:
        """The recipes in conf/experiment/ (read-only) and the saved experiments."""
        return service.experiments.all()

    @router.post("", status_code=201)
    def save_experiment(body: ExperimentIn) -> dict[str, Any]:
        """Compose name + recipe + overrides with Hydra, then save them (422 naming a bad key, 409 if taken)."""
        check_id("experiment", body.name)
        if body.recipe is not None and not service.experiments.is_recipe(body.recipe):
            raise ApiError(422, "invalid recipe", f"{body.recipe!r} is not a recipe in conf/experiment/ (they are: "
                                                  f"{', '.join(r['id'] for r in service.experiments.recipes())})")
        overrides = service.policy.check(body.overrides)
        composed = service.composer.compose(body.recipe, overrides)
        saved = service.experiments.save(body.name, body.recipe, overrides, body.description)
        return {**saved, "summary": composed.summary}

    @router.get("/{experiment_id}")
    def get_experiment(experiment_id: str) -> dict[str, Any]:
        experiment = service.experiments.get(experiment_id)
        runs = [data.get("id") for _, data in service.index.runs() if experiment_of(data) == experiment_id]
        return {**experiment, "runs": runs}

    @router.delete("/{experiment_id}")
    def delete_experiment(experiment_id: str) -> dict[str, Any]:
        """Saved experiments only (their runs stay)."""
        service.experiments.delete(experiment_id)
        return {"deleted": experiment_id}

    return router


def training_routes(service: Service) -> APIRouter:
    router = APIRouter(prefix="/api/training", tags=["training"])

    @router.post("/{experiment_id}/run", status_code=202)
    def start_run(experiment_id: str, body: OverridesIn | None = None) -> dict[str, Any]:
        """Start a run of the experiment: answers at once with the pending run (its directory and run.json exist
        already); 409 naming the active run when the project's devices are taken."""
        experiment = service.experiments.get(experiment_id)
        return service.launcher.start(experiment, body.overrides if body else [])

    @router.get("/{run_id}/stream", response_class=EventSourceResponse,
                responses={200: {"content": {"text/event-stream": {}}, "description": "status, metrics, end events"}})
    async def stream(run_id: str, last_event_id: str | None = Header(None),
                     after: int | None = Query(None, description="the last epoch the client has (as Last-Event-ID)")):
        """Server-Sent Events: ``status`` (at start and on change), ``metrics`` (one per epoch, id = epoch),
        heartbeat comments, ``end`` when the run is completed, failed or interrupted."""
        run_dir, _ = await run_in_threadpool(service.index.find, run_id)
        if last_event_id not in (None, ""):
            try:
                after = int(last_event_id)
            except ValueError:
                raise ApiError(422, "invalid Last-Event-ID", f"Last-Event-ID {last_event_id!r} is not an epoch "
                                                             "number") from None
        service.hub.check_room(run_dir)
        return EventSourceResponse(service.hub.events(run_id, run_dir, after), ping=service.settings.heartbeat_s,
                                   ping_message_factory=lambda: ServerSentEvent(comment="heartbeat"))

    return router


def run_routes(service: Service) -> APIRouter:
    router = APIRouter(prefix="/api/runs", tags=["runs"])

    @router.get("")
    def list_runs(status: str | None = None, experiment: str | None = None) -> list[dict[str, Any]]:
        """Every run under the runs root (API, shell, sweep jobs), oldest first; status as readers must see it."""
        if status is not None and status not in STATUSES:
            raise ApiError(422, "invalid status", f"status={status!r}: one of {', '.join(STATUSES)}")
        rows = [run_summary(service, run_dir, data) for run_dir, data in service.index.runs()]
        return [r for r in rows if (status is None or r["status"] == status)
                and (experiment is None or r["experiment"] == experiment)]

    @router.get("/{run_id}")
    def get_run(run_id: str) -> dict[str, Any]:
        """run.json as written, with the status a reader must show (``stale``: why a dead run reads interrupted)."""
        run_dir, data = service.index.find(run_id)
        launch = service.launcher.launch_of(run_dir)
        return {**run_summary(service, run_dir, data), "stale": stale_reason(data), "run": data,
                "launch": launch.public() if launch else None}

    @router.get("/{run_id}/metrics")
    def get_metrics(run_id: str, after: int | None = Query(None, description="only epochs after this one")) -> list:
        run_dir, _ = service.index.find(run_id)
        entries = read_json(run_dir / METRICS_FILE, default=[]) or []
        return [e for e in entries if after is None or int(e.get("epoch", -1)) > after]

    @router.get("/{run_id}/log")
    def get_log(run_id: str, tail: int = Query(200, ge=1, le=MAX_LOG_LINES)) -> dict[str, Any]:
        """The end of logs/training.log (logs/console.log, the process's own output, when there is none yet)."""
        run_dir, _ = service.index.find(run_id)
        name = next((n for n in (TRAINING_LOG, CONSOLE_LOG) if (run_dir / n).is_file()), None)
        return {"run_id": run_id, "file": name, "lines": _tail(run_dir / name, tail) if name else []}

    @router.post("/{run_id}/stop", status_code=202)
    def stop_run(run_id: str) -> dict[str, Any]:
        """SIGTERM to the run's process group: it saves last.ckpt at the next batch and ends interrupted."""
        run_dir, data = service.index.find(run_id)
        return service.launcher.stop(run_id, run_dir, data)

    @router.post("/{run_id}/retry", status_code=202)
    def retry_run(run_id: str, body: OverridesIn | None = None) -> dict[str, Any]:
        """A new run with this run's experiment and overrides (plus any given now)."""
        run_dir, data = service.index.find(run_id)
        return service.launcher.retry(run_id, run_dir, data, body.overrides if body else [])

    @router.post("/{run_id}/resume", status_code=202)
    def resume_run(run_id: str, body: OverridesIn | None = None) -> dict[str, Any]:
        """Continue an interrupted or failed run in its own directory from last.ckpt (train.py resume=)."""
        run_dir, data = service.index.find(run_id)
        return service.launcher.resume(run_id, run_dir, data, body.overrides if body else [])

    return router


def index_response(static_dir: Path) -> Any:
    """``GET /``: the dashboard page when ``static/index.html`` is there, else where things are."""
    from fastapi.responses import FileResponse

    page = static_dir / "index.html"
    if page.is_file():
        return FileResponse(page)
    return JSONResponse({"service": "aistudio", "docs": "/docs", "openapi": "/openapi.json",
                         "endpoints": ["/api/experiments", "/api/training/{experiment_id}/run", "/api/runs",
                                       "/api/runs/{run_id}", "/api/training/{run_id}/stream"]})
