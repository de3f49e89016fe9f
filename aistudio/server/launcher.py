"""Starting, resuming and stopping training: each run is a detached ``train.py`` process.

A run is created in the request: ``<runs root>/<run id>/`` with a pending run.json (marked ``launch``),
which the spawned train.py takes over (:func:`aistudio.runs.record.awaiting_start`), so the run exists,
with its id, from the click on. The child runs in its own session (process group), with stdout and stderr
in ``logs/console.log``: the server's exit, a crash or a restart does not touch it, and its OOM or kill -9
cannot take the server down. The project's lock is the one train.py takes (:func:`aistudio.runs.lock.run_lock`),
checked without taking it; the window between the spawn and the child taking it is covered by the launch
itself, so two quick requests cannot both start. A waiter thread reaps each child: one that died before
taking its run over leaves it ``failed`` with the reason and the end of its output (``interrupted`` when a
stop asked for it), never pending. Stop is SIGTERM to the run's process group, as a scheduler sends it: the
run saves last.ckpt at the next batch boundary and records itself ``interrupted``.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aistudio.overrides import override_key
from aistudio.run_layout import RUN_FILE, RUNS_ROOT_ENV
from aistudio.runs.atomic import read_json
from aistudio.runs.lock import RunLock
from aistudio.runs.record import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    RunRecord,
    awaiting_start,
    effective_status,
    new_run_id,
    utc_now,
)
from aistudio.server.composition import Composer, merge_overrides, task_overrides
from aistudio.server.errors import ApiError
from aistudio.server.run_index import RunIndex
from aistudio.server.safety import OverridePolicy
from aistudio.server.settings import REPO, Settings

CONSOLE_LOG = "logs/console.log"  # the child's stdout and stderr
KEEP_LAUNCHES = 200
_PLAIN = re.compile(r"[A-Za-z0-9_./:-]+")


def hydra_value(text: str) -> str:
    """``text`` as one Hydra override value (quoted when it holds characters the grammar would parse)."""
    if _PLAIN.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def output_tail(path: Path, lines: int = 40, max_bytes: int = 16384) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - max_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def exit_reason(tail: str, returncode: int) -> str:
    """Why a child ended before its run started: train.py's own ``Error:`` line, else how it ended."""
    how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exited with code {returncode}"
    said = [line.strip() for line in tail.splitlines() if line.strip()]
    errors = [line for line in said if line.startswith("Error:")]
    why = errors[-1].removeprefix("Error:").strip() if errors else (said[-1] if said else "no output")
    return f"train.py {how} before the run started: {why}"


@dataclass
class Launch:
    """A train.py process this server started (``kind``: run | resume)."""

    run_id: str
    run_dir: Path
    process: subprocess.Popen
    kind: str
    lock_path: Path | None
    stop_requested: bool = False
    returncode: int | None = None
    error: dict[str, Any] | None = None  # a resume that ended before taking its run over: why
    done: threading.Event = field(default_factory=threading.Event)

    def taken_over(self, data: dict[str, Any] | None) -> bool:
        """Whether the child wrote run.json itself (it holds the lock from then on)."""
        return bool(data) and data.get("pid") == self.process.pid  # type: ignore[union-attr]

    def public(self) -> dict[str, Any]:
        return {"kind": self.kind, "pid": self.process.pid, "alive": not self.done.is_set(),
                "returncode": self.returncode, "stop_requested": self.stop_requested, "error": self.error}


class Launcher:
    def __init__(self, settings: Settings, composer: Composer, policy: OverridePolicy, index: RunIndex,
                 on_change: Callable[[Path], None] | None = None):
        self.settings = settings
        self.composer = composer
        self.policy = policy
        self.index = index
        self.on_change = on_change  # told when a child ends (a dead process writes no file to watch)
        self._launches: dict[Path, Launch] = {}
        self._mutex = threading.Lock()  # busy check, run directory and spawn: one launch at a time

    # -- status ------------------------------------------------------------------------------------
    def launch_of(self, run_dir: Path) -> Launch | None:
        return self._launches.get(run_dir)

    def status_of(self, run_dir: Path, data: dict[str, Any]) -> str:
        """The status a client sees: ``pending`` while a child of ours is starting the run (a resume's
        run.json still says interrupted until the child takes it over), else the effective status."""
        launch = self._launches.get(run_dir)
        if launch and not launch.done.is_set() and not launch.taken_over(data):
            return "pending"
        return effective_status(data)

    # -- start -------------------------------------------------------------------------------------
    def start(self, experiment: dict[str, Any], extra: list[str], retry_of: str | None = None) -> dict[str, Any]:
        """A new run of ``experiment`` (+ ``extra`` overrides): checked, composed, recorded, spawned."""
        recipe = experiment.get("recipe")
        overrides = self.policy.check(merge_overrides(experiment.get("overrides", []), extra))
        composed = self.composer.compose(recipe, overrides)
        recorded = task_overrides(recipe, overrides)
        with self._mutex:
            self.refuse_if_busy(composed.lock)
            run_id = new_run_id()
            run_dir = self.settings.runs_root / run_id
            run_dir.mkdir(parents=True)
            argv = [str(self.settings.train_script), *recorded, f"hydra.run.dir={hydra_value(str(run_dir))}"]
            RunRecord.create(
                run_dir, id=run_id, overrides=recorded, task=composed.summary["task"], model=composed.summary["model"],
                experiment={"id": experiment.get("id"), "kind": experiment.get("kind"), "recipe": recipe},
                launch={"by": "aistudio serve", "server_pid": os.getpid(), "requested_at": utc_now(),
                        "retry_of": retry_of},
                argv=argv, command=shlex.join([os.path.basename(sys.executable), *argv]), cwd=str(REPO))
            self._spawn(run_id, run_dir, argv, "run", composed.lock)
        return {"run_id": run_id, "status": "pending", "experiment_id": experiment.get("id"),
                "dir": os.path.relpath(run_dir, self.settings.runs_root)}

    def retry(self, run_id: str, run_dir: Path, data: dict[str, Any], extra: list[str]) -> dict[str, Any]:
        """A new run with the same experiment and overrides as ``run_id`` (the overrides checked again)."""
        if self.status_of(run_dir, data) in ACTIVE_STATUSES:
            raise ApiError(409, "run active", f"run {run_id} is still {self.status_of(run_dir, data)}: stop it first",
                           active_run=run_id)
        recorded = [o for o in data.get("overrides") or [] if override_key(o) != "resume"]
        recipe = next((o.split("=", 1)[1] for o in reversed(recorded) if override_key(o) == "experiment"), None)
        experiment = dict(data.get("experiment") or {})
        experiment.update(recipe=recipe, overrides=[o for o in recorded if override_key(o) != "experiment"])
        return self.start(experiment, extra, retry_of=run_id)

    def resume(self, run_id: str, run_dir: Path, data: dict[str, Any], extra: list[str]) -> dict[str, Any]:
        """train.py's own ``resume=<run dir>`` (its recorded overrides come back; ``extra`` win)."""
        status = self.status_of(run_dir, data)
        if status not in ("interrupted", "failed"):
            hint = (f"; start a new run from its weights with model.weights={run_dir}/checkpoints/best.ckpt"
                    if status == "completed" else "")
            raise ApiError(409, "cannot resume", f"run {run_id} is {status}: only interrupted or failed runs "
                                                 f"resume{hint}", run_id=run_id, status=status)
        extra = self.policy.check(extra)
        recorded = [o for o in data.get("overrides") or [] if override_key(o) != "resume"]
        composed = self.composer.compose(None, merge_overrides(recorded, extra))
        with self._mutex:
            self.refuse_if_busy(composed.lock)
            # train.py reads resume= itself before Hydra does (aistudio.cli.resume_args): the plain path
            argv = [str(self.settings.train_script), f"resume={run_dir}", *extra]
            self._spawn(run_id, run_dir, argv, "resume", composed.lock)
        return {"run_id": run_id, "status": "pending", "experiment_id": (data.get("experiment") or {}).get("id"),
                "dir": os.path.relpath(run_dir, self.settings.runs_root)}

    def refuse_if_busy(self, lock: RunLock | None) -> None:
        """409 naming the active run: one of ours still starting, or whoever holds the lock (train.py in a
        shell, a sweep job, another server)."""
        if lock is None:
            return
        for launch in self._launches.values():
            if launch.done.is_set() or launch.lock_path != lock.path:
                continue
            data = read_json(launch.run_dir / RUN_FILE) or {}
            if launch.taken_over(data) and data.get("status") in FINAL_STATUSES:
                continue  # ended, the process is only winding down: the lock is free
            raise ApiError(409, "run active", f"run {launch.run_id} is active on this project and devices "
                                              f"({lock.devices}) — wait for it to end or stop it",
                           active_run=launch.run_id)
        holder = lock.holder()
        if holder is not None:
            raise ApiError(409, "run active", str(lock.busy_error(holder)), active_run=holder.get("run_id"))

    def _spawn(self, run_id: str, run_dir: Path, argv: list[str], kind: str, lock: RunLock | None) -> None:
        console = run_dir / CONSOLE_LOG
        console.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", RUNS_ROOT_ENV: str(self.settings.runs_root)}
        with open(console, "ab") as out:
            out.write(f"--- {utc_now()} {shlex.join(argv)}\n".encode())
            out.flush()
            process = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        launch = Launch(run_id, run_dir, process, kind, lock.path if lock else None)
        self._launches[run_dir] = launch
        self.index.remember(run_id, run_dir)
        for old in [d for d, entry in self._launches.items() if entry.done.is_set()][:-KEEP_LAUNCHES]:
            del self._launches[old]
        threading.Thread(target=self._wait, args=(launch,), name=f"aistudio-launch-{run_id}", daemon=True).start()

    def _wait(self, launch: Launch) -> None:
        launch.returncode = launch.process.wait()
        try:
            self._after_exit(launch)
        finally:
            launch.done.set()
            if self.on_change:
                self.on_change(launch.run_dir)

    def _after_exit(self, launch: Launch) -> None:
        data = read_json(launch.run_dir / RUN_FILE)
        if launch.taken_over(data):
            return  # the run recorded its own end (or its death reads as interrupted: pid gone)
        tail = output_tail(launch.run_dir / CONSOLE_LOG)
        reason = exit_reason(tail, launch.returncode or 0)
        if data and awaiting_start(data):
            record = RunRecord(launch.run_dir, data)
            if launch.stop_requested:
                record.mark_interrupted("stopped before training started")
            else:
                record.mark_failed({"type": "LaunchFailed", "message": reason, "traceback": tail})
        else:  # a resume refused at start-up: the run it names is as it was
            launch.error = {"message": reason, "output": tail}

    # -- stop --------------------------------------------------------------------------------------
    def stop(self, run_id: str, run_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
        """SIGTERM to the run's process group (ours, or one started elsewhere on this host)."""
        status = self.status_of(run_dir, data)
        if status not in ACTIVE_STATUSES:
            raise ApiError(409, "run not active", f"run {run_id} is {status}: nothing to stop", run_id=run_id,
                           status=status)
        launch = self._launches.get(run_dir)
        if launch and not launch.done.is_set():
            launch.stop_requested = True
            _signal_group(launch.process.pid, launch.process.pid)
            return {"run_id": run_id, "status": "stopping", "signal": "SIGTERM"}
        if data.get("host") != socket.gethostname():
            raise ApiError(409, "run on another host", f"run {run_id} runs on {data.get('host')}: stop it there "
                                                       "(or cancel its SLURM job)", run_id=run_id)
        pid = int(data.get("pid") or 0)
        script = os.path.basename(str((data.get("argv") or ["train.py"])[0]))
        if not _runs_script(pid, script):
            raise ApiError(409, "run not active", f"process {pid} of run {run_id} is not {script} any more",
                           run_id=run_id)
        try:
            _signal_group(pid, os.getpgid(pid))
        except ProcessLookupError:
            pass  # ended in the meantime: its run.json says how
        return {"run_id": run_id, "status": "stopping", "signal": "SIGTERM"}


def _signal_group(pid: int, group: int) -> None:
    """SIGTERM to ``group`` when ``pid`` leads it (its DataLoader workers ignore it; the main process saves and
    stops them), else to ``pid`` alone (a shell job's group may hold other programs)."""
    try:
        if group == pid:
            os.killpg(group, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # ended in the meantime: its run.json says how


def _runs_script(pid: int, script: str) -> bool:
    """Whether ``pid`` still runs ``script`` (a pid is reused once its process is gone)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid > 0 and not Path("/proc/self").exists()  # no /proc on this system: trust the record
    return any(os.path.basename(a.decode(errors="replace")) == script for a in args)
