"""Turn failures into one actionable message: out-of-memory (CUDA or the CPU allocator), data-loader
worker deaths, shared memory (/dev/shm) too small for the batches in flight, a full disk, and config keys
a builder passes on to a constructor that does not take them.

Otherwise each ends a run in a long traceback whose first line does not say what to change (a full disk
during a checkpoint write reads "[enforce fail at inline_container.cc:672] . unexpected pos ...").
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

from aistudio import AistudioError, exception_chain
from aistudio.run_layout import RUN_FILE

_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "outofmemoryerror")
_WORKER_MARKERS = ("exited unexpectedly", "is killed by signal")
# torch: "unable to allocate shared memory(shm) for file ...: No space left on device"; a worker killed by
# SIGBUS: "... It is possible that dataloader's workers are out of shared memory"
_SHARED_MEMORY_MARKERS = ("unable to allocate shared memory", "out of shared memory", "insufficient shared memory")
SHARED_MEMORY_DIR = "/dev/shm"  # where torch's shm_open puts a worker's batches (Linux)


def _unexpected_argument(chain: list[BaseException]) -> AistudioError | None:
    """A config key a ``_target_`` does not take (builders that pass ``**kwargs`` on to torchvision)."""
    typo = next((c for c in chain if isinstance(c, TypeError) and "unexpected keyword argument" in str(c)), None)
    if typo is None:
        return None
    targets = re.findall(r"Error in call to target '([^']+)'", " ".join(str(c) for c in chain))
    where = f" (building {targets[-1]})" if targets else ""
    argument = re.search(r"argument '([^']+)'", str(typo))
    name = argument.group(1) if argument else "?"
    return AistudioError(f"{typo}{where} — the config passes {name!r} to something that does not take it: remove it "
                         f"(e.g. ~model.{name} when it was added with +model.{name}=...)")


_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} bytes"


def _mount(path: Path) -> tuple[Path, str | None]:
    """The mount point holding ``path`` and its file-system type (from /proc/self/mounts, when readable)."""
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    kind = None
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            # spaces and the like are octal escapes there (\040)
            if len(fields) > 2 and re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1]) == str(path):
                kind = fields[2]  # the last entry wins: it is the one mounted on top
    except OSError:
        pass
    return path, kind


def _disk_full(chain: list[BaseException]) -> AistudioError | None:
    """ENOSPC / EDQUOT anywhere in the chain (torch.save wraps it in "[enforce fail at inline_container.cc]
    ... unexpected pos"): which file, about how much it needed, how much is free on which disk."""
    full = next((c for c in chain if isinstance(c, OSError) and c.errno in _DISK_FULL), None)
    if full is None:
        return None
    what = _DISK_FULL[full.errno]  # type: ignore[index]
    named = next((getattr(c, "checkpoint_path", None) for c in chain if getattr(c, "checkpoint_path", None)), None)
    named = named or next((c.filename for c in chain if isinstance(c, OSError) and c.filename), None)
    needed = next((c.needed_bytes for c in chain if getattr(c, "needed_bytes", None)), None)
    if named is not None:
        target = Path(os.fsdecode(named))
        folder, writing = target.parent, f"writing {target}"
    else:  # a write to an already open file (metrics.json, a log) names none: the run directory's disk
        folder = _hydra_run_dir()
        if folder is None:
            return AistudioError(f"{what} ({full}) — free space on the run directory's disk or set "
                                 "paths.runs_root (or hydra.run.dir) to a folder on a larger disk")
        writing = f"writing into {folder}"
    amounts = [f"about {_size(needed)} needed"] if needed else []
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    where = ""
    if existing is not None:
        mount, kind = _mount(existing)
        where = f" on {mount}"
        try:
            stats = os.statvfs(existing)
            amounts.append(f"{_size(stats.f_bavail * stats.f_frsize)} free on {f'{kind} ' if kind else ''}{mount}")
        except OSError:
            pass
    details = f" ({', '.join(amounts)})" if amounts else ""
    advice = f"free space{where}"
    if any((p / RUN_FILE).is_file() for p in (folder, *folder.parents[:3])):  # in a run directory
        advice += " or set paths.runs_root (or hydra.run.dir) to a folder on a larger disk"
    return AistudioError(f"{what} {writing}{details} — {advice}")


def _hydra_run_dir() -> Path | None:
    """The current Hydra job's output (run) directory, when there is one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - not inside a Hydra job
        return None


def _shared_memory(chain: list[BaseException], data: dict[str, Any]) -> AistudioError | None:
    """The DataLoader's workers could not put a batch into shared memory: how big /dev/shm is, and the
    settings that decide how much of it the batches in flight take."""
    line = next((text.strip() for cause in chain for text in str(cause).splitlines()
                 if any(marker in text.lower() for marker in _SHARED_MEMORY_MARKERS)), None)
    if line is None:
        return None
    size = ""
    try:
        stats = os.statvfs(SHARED_MEMORY_DIR)
        size = f" ({SHARED_MEMORY_DIR} is {_size(stats.f_blocks * stats.f_frsize)})"
    except OSError:
        pass
    return AistudioError(
        f"the data-loading workers ran out of shared memory{size}: {line[:200]} — each batch goes from a worker to "
        "training through shared memory, about data.num_workers x data.prefetch_factor batches at once: lower "
        f"data.num_workers (now {data.get('num_workers', '?')}), data.prefetch_factor (now "
        f"{data.get('prefetch_factor', '?')}) or data.batch_size (now {data.get('batch_size', '?')}), use "
        "data.num_workers=0 (no shared memory, slower), or give the machine more (Docker: --shm-size=8g)")


def explain_failure(error: BaseException, config: dict[str, Any] | None = None) -> AistudioError | None:
    """An :class:`AistudioError` (caused by ``error``) for OOM, worker crashes, shared memory and a full disk,
    else None."""
    data = (config or {}).get("data") or {}
    chain = exception_chain(error)
    for explain in (_unexpected_argument, lambda chain: _shared_memory(chain, data), _disk_full):
        problem = explain(chain)
        if problem is not None:
            problem.__cause__ = error
            return problem
    for cause in chain:
        text = f"{type(cause).__name__}: {cause}".lower()
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        if any(marker in text for marker in _OOM_MARKERS) or type(cause).__name__ == "OutOfMemoryError":
            problem = AistudioError(
                f"out of memory ({first[:200]}) — lower data.batch_size (now {data.get('batch_size', '?')}) or "
                f"data.image_size (now {data.get('image_size', '?')}), use a smaller model, or on GPU use "
                "hardware.precision=16-mixed / bf16-mixed")
        elif any(marker in text for marker in _WORKER_MARKERS):
            problem = AistudioError(
                f"a data-loading worker died ({first[:200]}) — usually the workers ran out of memory or a "
                f"decoder crashed; lower data.num_workers (now {data.get('num_workers', '?')}), or run with "
                "data.num_workers=0 to see the underlying error in the main process")
        else:
            continue
        problem.__cause__ = error
        return problem
    return None


def quoted_settings(cfg: Any) -> dict[str, Any]:
    """The data settings an out-of-memory message quotes, read from the composed config before it is
    resolved (an unresolvable value is quoted as '?': this must not fail before the run is recorded)."""
    from omegaconf import OmegaConf

    settings = {}
    for key in ("batch_size", "image_size", "num_workers", "prefetch_factor"):
        try:
            settings[key] = OmegaConf.select(cfg, f"data.{key}", default="?")
        except Exception:  # noqa: BLE001 - an unresolvable value just is not quoted
            settings[key] = "?"
    return {"data": settings}
