"""One active training run per project and device set (the design notes' GPU resource rule).

The lock is a POSIX record lock (``fcntl.lockf``) on a file under the lock folder
(``AISTUDIO_LOCK_DIR``, default ``~/.cache/aistudio/locks``), keyed by the project and the devices.
It belongs to the process alone: the kernel drops it when that process dies, however it dies, and
forked children (DataLoader workers) do not inherit it, so a lock left by kill -9 or the OOM killer is
free again at once even while the dead run's workers are still winding down (an ``flock`` would stay
held by them). Nobody is ever asked to delete a file. POSIX locks do not exclude the holder itself, so
locks held by this process are also kept in :data:`_HELD`. Who holds a lock is in a JSON file beside
it, written atomically, so the refusal can name the active run.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aistudio import AistudioError, user_path
from aistudio.runs.atomic import atomic_write_json, read_json
from aistudio.runs.record import utc_now

_HELD: set[Path] = set()  # lock files this process holds


def default_lock_dir() -> Path:
    return Path(os.environ.get("AISTUDIO_LOCK_DIR") or Path.home() / ".cache" / "aistudio" / "locks")


def project_identity(project: Any) -> str:
    """A stable name for ``data.project``: the resolved folder, or a built-in generator's config."""
    if isinstance(project, dict):
        return json.dumps(project, sort_keys=True, default=str)
    path = user_path(str(project))
    if path.name.endswith(".json"):
        path = path.parent
    return str(path.resolve())


def device_set(hardware: dict[str, Any]) -> str:
    """The lock's device key: the concrete devices the hardware setting resolves to on this machine
    (:func:`aistudio.devices.resolve_devices`), so ``auto`` and its explicit equivalent share a lock."""
    from aistudio.devices import resolve_devices

    return resolve_devices(hardware.get("selected_devices", "auto"), hardware.get("cpu_processes", 1)).key


def run_lock(cfg: DictConfig, lock_dir: str | Path | None = None) -> RunLock | None:
    """The lock a run of the composed config ``cfg`` takes: its project and device set, resolved as train.py
    resolves them, so train.py and the service name the same lock file. None with ``exclusive=false``, or
    when the two values cannot be resolved yet (the run then fails on that itself, right after it is
    recorded). An impossible device setting raises :class:`AistudioError`."""
    if not cfg.get("exclusive", True):
        return None
    try:
        project = OmegaConf.to_container(cfg.data, resolve=True).get("project")  # type: ignore[union-attr]
        hardware = OmegaConf.to_container(cfg.hardware, resolve=True) if cfg.get("hardware") else {}
    except OmegaConfBaseException:
        return None
    return RunLock(project, device_set(hardware or {}), lock_dir)  # type: ignore[arg-type]


class RunLock:
    """Exclusive, non-blocking: :meth:`acquire` raises an :class:`AistudioError` naming the holder."""

    def __init__(self, project: Any, devices: str, lock_dir: str | Path | None = None):
        self.project = project_identity(project)
        self.devices = devices
        key = hashlib.sha1(f"{self.project}\n{devices}".encode()).hexdigest()[:16]
        folder = Path(lock_dir) if lock_dir else default_lock_dir()
        self.path = folder / f"{key}.lock"
        self.info_path = folder / f"{key}.json"
        self._fd: int | None = None

    def acquire(self, run_dir: str | Path, run_id: str | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path in _HELD:  # checked before opening: closing another descriptor would drop our lock
            self._refuse()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):  # e.g. no locks on this file system
                raise
            self._refuse()
        self._fd = fd
        _HELD.add(self.path)
        atomic_write_json(self.info_path, {"run_dir": str(run_dir), "run_id": run_id, "pid": os.getpid(),
                                           "host": socket.gethostname(), "project": self.project,
                                           "devices": self.devices, "started_at": utc_now()})

    def _refuse(self) -> NoReturn:
        raise self.busy_error(read_json(self.info_path, default={}) or {}) from None

    def busy_error(self, holder: dict[str, Any]) -> AistudioError:
        """The refusal, naming the active run (``holder``: the JSON record beside the lock)."""
        return AistudioError(
            f"another training run is active on this project and devices ({self.devices}): "
            f"{holder.get('run_dir', '?')} (run {holder.get('run_id', '?')}, pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, started {holder.get('started_at', '?')}) — wait for it to end or stop "
            f"it (aistudio runs list), or pass exclusive=false to share the devices on purpose")

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock (its JSON record; ``{}`` when unreadable), or None when it is free.

        Asked with ``F_GETLK``, without taking the lock: a run starting at that very moment is never
        refused because someone asked (the service checks before it spawns train.py)."""
        if self.path in _HELD:
            return read_json(self.info_path, default={}) or {}
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            # struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (+ padding)
            query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
            held = struct.unpack("hhqqi4x", answer)[0] != fcntl.F_UNLCK
        finally:
            os.close(fd)  # we hold no lock on this file, so closing drops nothing
        return (read_json(self.info_path, default={}) or {}) if held else None

    def release(self) -> None:
        if self._fd is None:
            return
        self.info_path.unlink(missing_ok=True)
        fcntl.lockf(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)  # closing any descriptor of the file would drop the lock: this is the only one
        self._fd = None
        _HELD.discard(self.path)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
