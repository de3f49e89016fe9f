"""run.json: the record of one run, rewritten atomically at every status change.

Statuses: pending -> running -> completed | failed | interrupted; a retry goes back to pending with
the attempt count raised and the earlier attempt kept in ``history``. The training process refreshes
``heartbeat_at`` every epoch and every ``heartbeat_interval_s``; a reader that finds a pending/running
run whose process is gone (same host) or whose heartbeat is overdue shows it as ``interrupted``
(:func:`effective_status`) without the dead process's help. Readers go through :func:`load_run` so
the file layout stays one documented contract (see README, "Run directory").
"""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
import threading
import traceback
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from aistudio.run_layout import RUN_FILE
from aistudio.runs.atomic import atomic_write_json, read_json

SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "completed", "failed", "interrupted")
FINAL_STATUSES = ("completed", "failed", "interrupted")
ACTIVE_STATUSES = ("pending", "running")
HEARTBEAT_INTERVAL_S = 30.0
_TRACKED_PACKAGES = (
    "aistudio", "torch", "torchvision", "lightning", "torchmetrics", "hydra-core", "omegaconf",
    "albumentations", "opencv-python-headless", "numpy", "timm",
)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_run_id() -> str:
    """Sortable and unique even for jobs started in the same second: ``YYYYmmdd-HHMMSS-xxxxxx``."""
    return f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def package_versions(names: tuple[str, ...] | list[str] = _TRACKED_PACKAGES) -> dict[str, str | None]:
    """Python's version and the installed version of each package (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(cwd: str | Path) -> dict[str, Any] | None:
    """Commit and dirty flag of the repository the run was started from, or None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


class RunRecord:
    """In-memory copy of run.json; every mutating method writes the file at once."""

    def __init__(self, run_dir: str | Path, data: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.data = data
        self._lock = threading.Lock()  # the heartbeat thread writes too

    @property
    def path(self) -> Path:
        return self.run_dir / RUN_FILE

    @property
    def status(self) -> str:
        return self.data["status"]

    @classmethod
    def create(cls, run_dir: str | Path, **fields: Any) -> RunRecord:
        """Start a new record (status ``pending``) or reopen an existing one for another attempt."""
        run_dir = Path(run_dir).resolve()
        existing = read_json(run_dir / RUN_FILE)
        now = utc_now()
        adopted = bool(existing) and awaiting_start(existing)
        if adopted:  # written by a launcher for this process: the same run, not another attempt
            data = existing
        elif existing:
            data = existing
            history = data.setdefault("history", [])
            previous = {k: data.get(k) for k in ("attempt", "status", "started_at", "ended_at", "error")}
            previous["duration_s"] = data.get("attempt_duration_s", data.get("duration_s"))
            reason = stale_reason(data)
            if reason:  # its process died without a word (kill -9, OOM killer, power loss)
                previous.update(status="interrupted", ended_at=data.get("heartbeat_at"),
                                duration_s=_seconds_between(data.get("started_at") or data.get("pending_at"),
                                                            data.get("heartbeat_at")),
                                error={"type": "Stale", "message": reason, "traceback": None})
            history.append(previous)
            data["attempt"] = int(data.get("attempt", 1)) + 1
            for key in ("started_at", "ended_at", "duration_s", "attempt_duration_s", "error"):
                data[key] = None
        else:
            data = {
                "schema_version": SCHEMA_VERSION,
                "id": new_run_id(),
                "attempt": 1,
                "created_at": now,
                "started_at": None,
                "ended_at": None,
                "duration_s": None,
                "error": None,
                "best": None,
                "final_metrics": {},
                "test_metrics": {},
                "epochs_completed": 0,
                "history": [],
            }
        data.update(
            status="pending",
            # this attempt's start (started_at: when training began); an adopted run's is the request's
            pending_at=data.get("pending_at") if adopted else now,
            run_dir=str(run_dir),
            command=shlex.join([os.path.basename(sys.executable), *sys.argv]),
            argv=list(sys.argv),
            cwd=os.getcwd(),
            git=git_state(os.getcwd()),
            versions=package_versions(),
            host=socket.gethostname(),
            pid=os.getpid(),
            updated_at=now,
            heartbeat_at=now,
            heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
        )
        data.update(fields)
        record = cls(run_dir, data)
        record.write()
        return record

    def write(self, durable: bool = True) -> None:
        """Rewrite run.json; ``durable=False`` (progress, heartbeats) skips the fsync: see ``atomic_write``."""
        with self._lock:
            self.data["updated_at"] = self.data["heartbeat_at"] = utc_now()
            atomic_write_json(self.path, self.data, durable)

    def update(self, **fields: Any) -> None:
        """Change fields and write at once; fsync'd when the status changes (progress alone is not)."""
        with self._lock:
            durable = "status" in fields
            self.data.update(fields)
        self.write(durable)

    def beat(self) -> None:
        """Refresh the heartbeat (only while the run is active: a final status is never overwritten)."""
        if self.status in ACTIVE_STATUSES:
            self.write(durable=False)

    def mark_running(self) -> None:
        self.update(status="running", started_at=utc_now())

    def _finish(self, status: str, **fields: Any) -> None:
        """``duration_s`` is the run's training time over all attempts; ``attempt_duration_s`` this one's
        (each earlier attempt's is in ``history``)."""
        ended = utc_now()
        this = _seconds_between(self.data.get("started_at") or self.data.get("pending_at"), ended)
        earlier = sum(past.get("duration_s") or 0.0 for past in self.data.get("history") or [])
        self.update(status=status, ended_at=ended, attempt_duration_s=this,
                    duration_s=round(this + earlier, 3) if this is not None else None, **fields)

    def mark_completed(self, **fields: Any) -> None:
        self._finish("completed", **fields)

    def mark_failed(self, error: BaseException | dict[str, Any]) -> None:
        """``error``: the exception, or an already described one (type, message, traceback)."""
        self._finish("failed", error=error if isinstance(error, dict) else describe_error(error))

    def mark_interrupted(self, reason: str) -> None:
        self._finish("interrupted", error={"type": "Interrupted", "message": reason, "traceback": None})


def awaiting_start(data: dict[str, Any]) -> bool:
    """Whether run.json is a record a launcher (``aistudio serve``) wrote for a run it is starting: pending,
    marked ``launch``, never started. The train.py it spawns in that directory takes the record over (same
    id, created_at, experiment) instead of refusing the directory as taken or counting a second attempt."""
    return data.get("status") == "pending" and bool(data.get("launch")) and not data.get("started_at")


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 3)


def describe_error(error: BaseException) -> dict[str, Any]:
    return {
        "type": type(error).__name__,
        "message": str(error),
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    }


def process_alive(host: str | None, pid: int | None) -> bool:
    """Whether ``pid`` still runs on this host (False for another host: it cannot be checked from here)."""
    if not pid or host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_reason(data: dict[str, Any], now: datetime | None = None) -> str | None:
    """Why a run recorded as pending/running is in fact dead, or None when it may still be alive.

    Same host: the pid is checked (kill -9, OOM killer). Other hosts: the heartbeat must be younger
    than three intervals plus a minute (power loss, a lost node).
    """
    if data.get("status") not in ACTIVE_STATUSES:
        return None
    if data.get("host") == socket.gethostname():
        if not process_alive(data.get("host"), data.get("pid")):
            return f"process {data.get('pid')} on {data.get('host')} is gone (killed or crashed)"
        return None
    beat = data.get("heartbeat_at") or data.get("updated_at")
    if not beat:
        return None
    interval = float(data.get("heartbeat_interval_s") or HEARTBEAT_INTERVAL_S)
    age = ((now or datetime.now(timezone.utc)) - datetime.fromisoformat(beat)).total_seconds()
    if age > 3 * interval + 60:
        return f"no heartbeat from {data.get('host')} for {age:.0f} s"
    return None


def effective_status(data: dict[str, Any]) -> str:
    """The status a reader should show: a pending/running run whose process is dead is ``interrupted``."""
    return "interrupted" if stale_reason(data) else str(data.get("status"))


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Read run.json of a run directory (raises FileNotFoundError when there is none)."""
    data = read_json(Path(run_dir) / RUN_FILE)
    if data is None:
        raise FileNotFoundError(f"{Path(run_dir) / RUN_FILE} does not exist: not a run directory")
    return data
