"""A daemon thread that refreshes run.json's heartbeat while a run is active.

Epoch ends refresh it too, but one epoch can take hours: the thread is what lets a reader on another
host tell a long epoch from a dead node.
"""

from __future__ import annotations

import logging
import threading

from aistudio.runs.record import RunRecord

log = logging.getLogger(__name__)


class Heartbeat:
    """``with Heartbeat(record, interval_s):`` beats every ``interval_s`` seconds until the block ends."""

    def __init__(self, record: RunRecord, interval_s: float):
        self.record = record
        self.interval_s = float(interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aistudio-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.record.beat()
            except OSError as err:  # a full disk must not kill training; the next beat retries
                log.warning("heartbeat: could not write %s: %s", self.record.path, err)

    def __enter__(self) -> Heartbeat:
        self.record.update(heartbeat_interval_s=self.interval_s)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
