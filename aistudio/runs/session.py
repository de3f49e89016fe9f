"""One attempt of a run, from its start to its final status: ``with RunSession(run_dir, ...) as session:``.

The session owns run.json (:class:`~aistudio.runs.record.RunRecord`), the project/devices lock, the
heartbeat and the stop signals, and is the one place that maps how the block ends to the final status:

=====================================================  ==============================================
the block ...                                          run.json, then
=====================================================  ==============================================
returns                                                ``completed`` with what :meth:`complete` reported
is stopped by a signal (SIGINT/SIGTERM/SIGUSR1)         ``interrupted`` naming it (and last.ckpt if saved);
                                                       :class:`TrainingStopped` is raised
raises KeyboardInterrupt (a second Ctrl-C)             ``interrupted``; re-raised
raises SystemExit while running (Lightning's Ctrl-C)   ``interrupted`` with the exit code; re-raised
raises a user error or an explained failure            ``failed`` with the one-line reason; raised as
(out of memory, dead worker, full disk)                :class:`~aistudio.AistudioError`
raises anything else                                   ``failed`` with the traceback; re-raised
=====================================================  ==============================================

Only global rank 0 records and locks (other DDP ranks get signals and the same mapping; a failing rank
leaves its reason in ``logs/``, which rank 0 records when all it saw was the lost connection). A refused
start (the lock is held, the directory already holds another run) raises before anything is written.
A pending record that a launcher wrote for this process (``aistudio serve``: the run exists from the
click on) is taken over as this run (:func:`~aistudio.runs.record.awaiting_start`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import Any

from aistudio import AistudioError, user_error
from aistudio.run_layout import CONFIG_FILE, RUN_FILE
from aistudio.runs.atomic import atomic_write_json, read_json, remove_stale_temp_files
from aistudio.runs.failures import explain_failure
from aistudio.runs.heartbeat import Heartbeat
from aistudio.runs.lock import RunLock
from aistudio.runs.rank import global_rank
from aistudio.runs.rank_errors import clear_rank_errors, lost_peer, other_rank_failure, record_rank_error
from aistudio.runs.record import HEARTBEAT_INTERVAL_S, RunRecord, awaiting_start, new_run_id
from aistudio.runs.resume import slurm_fields, slurm_requeued
from aistudio.runs.stop import StopSignals, stopped_by

log = logging.getLogger("aistudio.train")


class RunSession:
    """The lifecycle of one attempt in ``run_dir``.

    ``checkpoint``: what the attempt resumes from (:func:`aistudio.runs.resume.resume_checkpoint`);
    ``resuming``: the user asked to continue this directory's run (then an existing run.json is expected);
    ``lock``: taken before run.json is touched, released at the end (None: not exclusive);
    ``fields``: extra run.json fields (overrides, task, model); ``failure_context``: the settings an
    explained failure quotes (``{"data": {"batch_size": ...}}``).
    """

    def __init__(self, run_dir: str | Path, *, checkpoint: Path | None = None, resuming: bool = False,
                 lock: RunLock | None = None, fields: dict[str, Any] | None = None,
                 failure_context: dict[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.checkpoint = checkpoint
        self.resuming = resuming or slurm_requeued(self.run_dir)
        self.lock = lock
        self.fields = fields or {}
        self.failure_context = failure_context or {}
        self.signals = StopSignals()
        self.record: RunRecord | None = None
        self._heartbeat: Heartbeat | None = None
        self._outcome: dict[str, Any] = {}

    # -- start -------------------------------------------------------------------------------------
    def __enter__(self) -> RunSession:
        if global_rank() == 0:
            self.record = self._open_record()
            clear_rank_errors(self.run_dir)  # an earlier attempt's (this directory's run is resumed)
        logging.captureWarnings(True)
        log.info("run directory: %s", self.run_dir)
        self.signals.install()  # restored in __exit__, whatever happens from here on
        return self

    def _open_record(self) -> RunRecord:
        existing = read_json(self.run_dir / RUN_FILE)
        if self.checkpoint is None and existing is not None and not self.resuming and not awaiting_start(existing):
            raise AistudioError(f"{self.run_dir} already holds a run; choose another hydra.run.dir or "
                                f"resume={self.run_dir}")
        run_id = (existing or {}).get("id") or new_run_id()
        if self.lock:  # before any record is touched: a refused start writes nothing
            self.lock.acquire(self.run_dir, run_id)
        try:
            remove_stale_temp_files(self.run_dir)  # left by a process killed mid-write
            return RunRecord.create(self.run_dir, id=run_id, **self.fields, **slurm_fields(),
                                    resumed_from=str(self.checkpoint) if self.checkpoint else None)
        except BaseException:
            self._release_lock()
            raise

    def begin(self, config: dict[str, Any], heartbeat_s: float | None = None,
              dataset: dict[str, Any] | None = None) -> None:
        """The resolved config is known and checked: freeze it (config.json), record what selects the best
        checkpoint and which dataset.json version it trains on (``dataset``: path, sha256, split), and keep
        the heartbeat going until the session ends."""
        if self.record is None:
            return
        self.record.update(monitor={"metric": config["task"]["monitor"], "mode": config["task"]["mode"]},
                           data_project=str(config["data"].get("project")), dataset=dataset)
        atomic_write_json(self.run_dir / CONFIG_FILE, config)
        self._heartbeat = Heartbeat(self.record, float(heartbeat_s or HEARTBEAT_INTERVAL_S))
        self._heartbeat.__enter__()

    def mark_running(self) -> None:
        """Training itself starts (the data and model are built)."""
        if self.record:
            self.record.mark_running()

    def complete(self, **fields: Any) -> None:
        """What the completed record holds (best, final_metrics, test_metrics, objective); written when the
        block ends without an error."""
        self._outcome = fields

    # -- end ---------------------------------------------------------------------------------------
    def __exit__(self, exc_type: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        try:
            if self._heartbeat:
                self._heartbeat.__exit__(None, None, None)
            if error is None:
                try:
                    if self.record:
                        self.record.mark_completed(**self._outcome)
                    return False
                except Exception as late:  # noqa: BLE001 - e.g. a full disk while writing run.json
                    replacement = self._record_end(late)
                    if replacement is None:
                        raise
                    raise replacement from late
            replacement = self._record_end(error)
            if replacement is not None:
                raise replacement from error
            return False
        finally:
            self._release_lock()
            self.signals.restore()

    def _record_end(self, error: BaseException) -> BaseException | None:
        """Write the final status for ``error``; return the exception to raise instead (None: ``error``)."""
        stop = stopped_by(error)
        if stop is not None:  # during start-up it may arrive inside an import that Hydra wraps in its own error
            log.warning("run interrupted: %s", stop)
            if self.record:
                saved = self.signals.saved_checkpoint
                self.record.mark_interrupted(f"{stop} ({saved.name} saved there)" if saved else str(stop))
            self.signals.forward(stop.signum)  # under submitit: its handler requeues the job (and exits)
            return None if stop is error else stop
        if isinstance(error, KeyboardInterrupt):
            if self.record:
                self.record.mark_interrupted("KeyboardInterrupt")
            return None
        if isinstance(error, SystemExit):
            if self.record and self.record.status == "running":
                self.record.mark_interrupted(f"training stopped (exit code {error.code}), e.g. Ctrl-C")
            return None
        own = user_error(error)
        problem = own or self._other_rank_failure(error) or explain_failure(error, self.failure_context)
        if self.record is None and global_rank() != 0:
            record_rank_error(self.run_dir, global_rank(), error)  # rank 0 records why the run failed
        if problem is not None:
            log.error("run failed: %s", problem)
        else:
            log.exception("run failed with %s", type(error).__name__, exc_info=error)
        if self.record:
            self.record.mark_failed(problem or error)
        return problem if problem is not None and problem is not own else None

    def _other_rank_failure(self, error: BaseException) -> AistudioError | None:
        """Rank 0 lost its connection to another DDP rank: that rank's own failure, when it left one (the
        ranks rank 0 started have exited by now: ``ddp_relaunch.reap_started_ranks``)."""
        if self.record is None or not lost_peer(error):
            return None
        other = other_rank_failure(self.run_dir)
        if other is None:
            return None
        problem = AistudioError(f"DDP rank {other['rank']} failed: {other['message']} (rank 0 then lost its "
                                "connection to it)")
        problem.__cause__ = error
        return problem

    def _release_lock(self) -> None:
        if self.lock:
            self.lock.release()

