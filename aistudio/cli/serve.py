"""``aistudio serve``: the training service (HTTP API + live progress) on a runs root.

FastAPI and uvicorn are imported only when the command runs, so ``aistudio --help`` stays fast; without
the ``server`` extra the command says how to install it.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

from aistudio import AistudioError
from aistudio.run_layout import default_runs_root

SERVER_PACKAGES = ("fastapi", "uvicorn", "sse_starlette", "watchfiles", "starlette", "pydantic", "anyio")


def _serve(args: argparse.Namespace) -> None:
    try:
        from aistudio.server.app import serve
        from aistudio.server.settings import Settings, default_data_roots
    except ImportError as err:
        if (err.name or "").split(".")[0] not in SERVER_PACKAGES:
            raise
        raise AistudioError(f"aistudio serve needs the server extra ({err.name} is not installed): "
                            "pip install -e .[server]") from None
    if not _loopback(args.host):
        print(f"warning: serving on {args.host}: the API has no authentication, and whoever reaches this port can "
              "start and stop training", file=sys.stderr)
    settings = Settings(runs_root=args.runs_root, data_roots=args.data_root or default_data_roots(),
                        heartbeat_s=args.heartbeat_s, stale_check_s=args.stale_check_s)
    serve(settings, args.host, args.port, args.log_level)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def add_serve_parser(commands: Any) -> None:
    serve = commands.add_parser("serve", help="the training service: experiments, runs and live progress over HTTP "
                                              "(needs the server extra)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--runs-root", type=Path, default=default_runs_root(),
                       help="runs root (default: $AISTUDIO_RUNS_DIR or ./runs)")
    serve.add_argument("--data-root", type=Path, action="append",
                       help="a folder request overrides may take datasets from (repeatable; default: "
                            "$AISTUDIO_DATA_DIR or ~/.cache/aistudio/datasets, and ../shared/data if present)")
    serve.add_argument("--heartbeat-s", type=float, default=15.0, help="SSE heartbeat period (default 15 s)")
    serve.add_argument("--stale-check-s", type=float, default=2.0,
                       help="how often a streamed run's process is checked when no file changes (default 2 s)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=_serve)
