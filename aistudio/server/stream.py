"""Live progress of a run as Server-Sent Events: ``GET /api/training/{run_id}/stream``.

Events: ``status`` when the stream opens and at each status change; ``metrics`` once per metrics.json
entry, with the epoch number as the event id (reconnecting with ``Last-Event-ID: N`` continues at epoch
N + 1: nothing missed, nothing repeated); ``end`` once the run is completed, failed or interrupted, and the
stream closes. Heartbeat comments keep idle connections open through proxies.

One :class:`RunWatch` per run directory, shared by all its clients, notices changes to run.json and
metrics.json with a file watcher (watchfiles: inotify, no busy poll) and re-reads them once for everybody.
A process that dies writes no file, so an active run's liveness (:func:`aistudio.runs.record.stale_reason`)
is re-checked on a slow timer too, and the launcher pokes the watch when a child of the server ends. Any
run under the runs root can be streamed: started here, from a shell or by a sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aistudio.run_layout import METRICS_FILE, RUN_FILE
from aistudio.runs.atomic import read_json
from aistudio.runs.record import FINAL_STATUSES, stale_reason
from aistudio.server.errors import ApiError

log = logging.getLogger("aistudio.server")

WATCHED_FILES = (RUN_FILE, METRICS_FILE)
STEP_MS = 50  # a change is reported once no other came for this long (metrics.json, then run.json)
DEBOUNCE_MS = 400  # at most this long, however busy the folder is
RETRY_MS = 2000  # what a browser's EventSource waits before reconnecting


@dataclass
class Snapshot:
    """What the clients of one run are told: its status as a reader must see it, and its epochs."""

    status: str
    record: dict[str, Any]
    stale: str | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)

    def status_event(self, run_id: str) -> dict[str, Any]:
        error = self.record.get("error") or {}
        return {"run_id": run_id, "status": self.status, "recorded_status": self.record.get("status"),
                "stale": self.stale, "error": error.get("message") if isinstance(error, dict) else None,
                "epochs_completed": self.record.get("epochs_completed", 0), "best": self.record.get("best"),
                "attempt": self.record.get("attempt", 1)}


class RunWatch:
    """The shared watcher of one run directory; ``version`` goes up whenever the snapshot changes."""

    def __init__(self, run_dir: Path, status_of: Callable[[Path, dict[str, Any]], str], stale_check_s: float):
        self.run_dir = run_dir
        self.status_of = status_of
        self.stale_check_s = stale_check_s
        self.subscribers = 0
        self.version = 0
        self.snapshot = Snapshot("pending", {})
        self._metrics_stamp: tuple[int, int, int] | None = None
        self._changed = asyncio.Condition()
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.read()

    def read(self) -> bool:
        """Re-read run.json (and metrics.json when its file changed); True when what clients see changed."""
        try:
            record = read_json(self.run_dir / RUN_FILE) or self.snapshot.record
        except (OSError, ValueError):
            record = self.snapshot.record  # files are replaced atomically; this is a vanished folder
        entries = self.snapshot.entries
        try:
            info = os.stat(self.run_dir / METRICS_FILE)
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        except OSError:
            stamp = None
        if stamp != self._metrics_stamp:
            try:
                loaded = read_json(self.run_dir / METRICS_FILE, default=[])
                entries = loaded if isinstance(loaded, list) else entries
                self._metrics_stamp = stamp
            except (OSError, ValueError):
                pass
        new = Snapshot(self.status_of(self.run_dir, record), record, stale_reason(record), entries)
        old = self.snapshot
        self.snapshot = new
        return (new.status, new.stale, len(new.entries), new.record.get("attempt")) != \
            (old.status, old.stale, len(old.entries), old.record.get("attempt"))

    async def refresh(self) -> None:
        if self.read():
            async with self._changed:
                self.version += 1
                self._changed.notify_all()

    async def wait_newer(self, version: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.version != version)

    def start(self) -> None:
        if self._task is None and self.snapshot.status not in FINAL_STATUSES:
            self._task = asyncio.create_task(self._watch(), name=f"aistudio-watch-{self.run_dir.name}")

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=5)

    async def _watch(self) -> None:
        from watchfiles import awatch

        # the notify watch exists only once awatch runs: catch a change made before that
        asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(self.refresh()))
        try:
            async for _ in awatch(self.run_dir, watch_filter=lambda _, path: os.path.basename(path) in WATCHED_FILES,
                                  stop_event=self._stop, rust_timeout=int(self.stale_check_s * 1000),
                                  yield_on_timeout=True, recursive=False, step=STEP_MS, debounce=DEBOUNCE_MS):
                await self.refresh()  # a change, or the slow timer (liveness)
        except Exception as err:  # noqa: BLE001 - e.g. the folder was removed: keep the clients informed
            log.warning("watching %s failed (%s): checking every %.0f s instead", self.run_dir, err, self.stale_check_s)
            while not self._stop.is_set():
                await self.refresh()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=self.stale_check_s)


class StreamHub:
    """The run watches of one server, created by a run's first client and closed after its last."""

    def __init__(self, status_of: Callable[[Path, dict[str, Any]], str], stale_check_s: float, max_runs: int):
        self.status_of = status_of
        self.stale_check_s = stale_check_s
        self.max_runs = max_runs
        self.loop: asyncio.AbstractEventLoop | None = None
        self._watches: dict[Path, RunWatch] = {}

    def check_room(self, run_dir: Path) -> None:
        if run_dir not in self._watches and len(self._watches) >= self.max_runs:
            raise ApiError(503, "too many streams", f"{len(self._watches)} runs are being streamed (at most "
                                                    f"{self.max_runs}): close some streams and try again")

    def poke(self, run_dir: Path) -> None:
        """From any thread: re-read a run now (its process ended; nothing may have been written)."""
        watch = self._watches.get(run_dir)
        if watch is not None and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(watch.refresh()))

    @contextlib.asynccontextmanager
    async def _subscribe(self, run_dir: Path) -> AsyncIterator[RunWatch]:
        watch = self._watches.get(run_dir)
        if watch is None:
            watch = self._watches[run_dir] = RunWatch(run_dir, self.status_of, self.stale_check_s)
            watch.start()
        else:
            await watch.refresh()
        watch.subscribers += 1
        try:
            yield watch
        finally:
            watch.subscribers -= 1
            if watch.subscribers == 0 and self._watches.get(run_dir) is watch:
                del self._watches[run_dir]
                await watch.close()

    async def events(self, run_id: str, run_dir: Path, after: int | None) -> AsyncIterator[dict[str, Any]]:
        """The event stream of one client; ``after``: the last epoch it has (``Last-Event-ID``)."""
        last_epoch = -1 if after is None else after
        async with self._subscribe(run_dir) as watch:
            version, snapshot = watch.version, watch.snapshot
            sent = snapshot.status
            yield {"event": "status", "data": json.dumps(snapshot.status_event(run_id)), "retry": RETRY_MS}
            while True:
                for entry in snapshot.entries:
                    epoch = int(entry.get("epoch", -1))
                    if epoch > last_epoch:
                        last_epoch = epoch
                        yield {"event": "metrics", "id": str(epoch), "data": json.dumps(entry)}
                if snapshot.status != sent:
                    sent = snapshot.status
                    yield {"event": "status", "data": json.dumps(snapshot.status_event(run_id))}
                if snapshot.status in FINAL_STATUSES:
                    yield {"event": "end", "data": json.dumps({"run_id": run_id, "status": snapshot.status,
                                                               "epochs": len(snapshot.entries)})}
                    return
                await watch.wait_newer(version)
                version, snapshot = watch.version, watch.snapshot
