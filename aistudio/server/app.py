"""The FastAPI app of ``aistudio serve``: its parts wired on one runs root, JSON errors, a body size limit.

Every error is JSON ``{"error": ..., "detail": ...}`` (4xx for what the client can fix): the service's own
refusals, FastAPI's request validation, unknown routes and methods, and a body over the limit (413).
The OpenAPI schema is at ``/docs``. ``GET /`` serves ``static/index.html`` (the dashboard page) when there
is one, and ``/static`` the files beside it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aistudio import __version__
from aistudio.server.composition import Composer
from aistudio.server.dashboard_api import dashboard_routes
from aistudio.server.errors import ApiError
from aistudio.server.experiments import ExperimentStore
from aistudio.server.launcher import Launcher
from aistudio.server.routes import Service, experiment_routes, index_response, run_routes, training_routes
from aistudio.server.run_index import RunIndex
from aistudio.server.safety import OverridePolicy
from aistudio.server.settings import STATIC_DIR, Settings
from aistudio.server.stream import StreamHub

log = logging.getLogger("aistudio.server")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodyLimit:
    """ASGI middleware: refuse a body over ``limit`` bytes (by Content-Length, else while it is read)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            response = JSONResponse({"error": "request too large",
                                     "detail": f"the request body is larger than {self.limit} bytes"}, 413)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


def _error(status: int, error: str, detail: Any, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        phrases = {404: "not found", 405: "method not allowed", 413: "request too large"}
        return _error(err.status_code, phrases.get(err.status_code, "http error"), err.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in err.errors()]
        return _error(422, "invalid request", "; ".join(problems))

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal error", f"{type(err).__name__}: {err}")


def build_service(settings: Settings) -> Service:
    composer = Composer(settings.conf_dir)
    policy = OverridePolicy(settings.conf_dir, settings.data_roots, settings.runs_root)
    index = RunIndex(settings.runs_root)
    launcher = Launcher(settings, composer, policy, index)
    hub = StreamHub(launcher.status_of, settings.stale_check_s, settings.max_streamed_runs)
    launcher.on_change = hub.poke
    experiments = ExperimentStore(settings.recipes_dir, settings.experiments_dir)
    return Service(settings, experiments, index, composer, policy, launcher, hub)


def create_app(settings: Settings) -> FastAPI:
    """The app for one runs root (created if missing); see :class:`~aistudio.server.settings.Settings`."""
    settings.runs_root.mkdir(parents=True, exist_ok=True)
    service = build_service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import asyncio

        service.hub.loop = asyncio.get_running_loop()
        # each streamed run's file watcher waits in a worker thread: room for them beside the handlers
        limiter = to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, 40 + settings.max_streamed_runs)
        yield

    app = FastAPI(title="aistudio", version=__version__, lifespan=lifespan,
                  description="Experiments, training runs and their live progress, on aistudio's run directories.")
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.include_router(experiment_routes(service))
    app.include_router(training_routes(service))
    app.include_router(run_routes(service))
    app.include_router(dashboard_routes(service))  # the dashboard's Run-button availability and run plots

    @app.get("/api/health", tags=["service"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "runs_root": str(settings.runs_root),
                "data_roots": [str(r) for r in settings.data_roots]}

    @app.get("/", include_in_schema=False)
    def index() -> Any:
        return index_response(STATIC_DIR)

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return app


def serve(settings: Settings, host: str, port: int, log_level: str = "info") -> None:
    """Run the app with uvicorn until Ctrl-C / SIGTERM (training processes started here keep running)."""
    import uvicorn

    app = create_app(settings)
    print(f"aistudio serve: http://{host}:{port}  (API docs: /docs; runs root {settings.runs_root})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
