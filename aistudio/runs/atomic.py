"""Atomic file writes, so a reader (the runs command, a live dashboard) never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


def _file_mode() -> int:
    """What a plain ``open(path, "w")`` would give: 0666 less the umask (mkstemp's files are 0600, which
    would keep teammates on a shared machine or cluster from reading runs and datasets)."""
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        with open("/proc/self/status", encoding="ascii") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, write: Callable[[IO[Any]], object], mode: str = "w", durable: bool = True) -> None:
    """Call ``write(handle)`` on a temp file in the target's folder, fsync it, then rename it over ``path``.

    A reader (or a process killed mid-write) sees the old file or the new one, never a half-written one.
    ``durable=False`` skips the fsync: still atomic for readers and for a killed process (the rename is),
    but a power loss may lose the update. For progress written every epoch (metrics.json, run.json's
    heartbeat and epoch count), where the next write comes soon and a status change is fsync'd anyway.
    A temp file left by a kill is named ``.<name>.*.tmp``; :func:`remove_stale_temp_files` clears them.
    """
    commit_temp(write_temp(path, write, mode), path, durable)


def write_temp(path: str | Path, write: Callable[[IO[Any]], object], mode: str = "w",
               reuse: Path | None = None) -> Path:
    """The first half of :func:`atomic_write`: ``write(handle)`` into a new temp file beside ``path``
    (flushed, not yet fsync'd); returns the temp file. On failure it is removed and the error raised.
    ``reuse``: a temp file of this caller's to rewrite from its start (and cut to what was written) instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = None
    if reuse is not None:
        try:
            fd, tmp = os.open(reuse, os.O_WRONLY), str(reuse)
        except OSError:  # gone meanwhile: a new file then
            reuse = None
    if fd is None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        if reuse is None:
            os.fchmod(fd, _file_mode())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            write(handle)
            if reuse is not None:
                handle.truncate()  # a shorter file than the one rewritten
            handle.flush()
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def commit_temp(tmp: str | Path, path: str | Path, durable: bool = True,
                replace: Callable[[Path, Path], object] = os.replace) -> None:
    """The second half of :func:`atomic_write`: fsync the temp file (unless not ``durable``), then rename
    it over ``path`` (with ``replace``). On failure the temp file is removed and the error raised."""
    try:
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        replace(Path(tmp), Path(path))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the hidden ``.*.tmp`` files of interrupted atomic writes in ``folder`` and its checkpoints/
    (a checkpoint's can be as large as the model). Call it only while no other process writes there."""
    folder = Path(folder)
    stale = [p for where in (folder, folder / "checkpoints") if where.is_dir()
             for p in where.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: str | Path, text: str, durable: bool = True) -> None:
    atomic_write(path, lambda handle: handle.write(text), durable=durable)


def atomic_write_json(path: str | Path, data: Any, durable: bool = True) -> None:
    """Serialise ``data`` as indented JSON (non-finite floats become null) and write it atomically."""
    atomic_write_text(path, json.dumps(_finite(data), indent=2, default=str) + "\n", durable)


def read_json(path: str | Path, default: Any = None) -> Any:
    """Read a JSON file, returning ``default`` when it does not exist."""
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def _finite(value: Any) -> Any:
    """Replace NaN/inf by None recursively: strict JSON readers (browsers) reject them."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
