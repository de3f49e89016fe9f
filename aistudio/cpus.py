"""How many CPUs this process may really use: its affinity mask, capped by the CPU quota of its cgroup.

Why: a container runtime limits CPU time with a quota (``docker run --cpus 4``, a Kubernetes CPU limit:
cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) while ``os.sched_getaffinity`` and torch's default thread
count still see every core of the host. On a 64-core node a run limited to 4 CPUs would then start 16
DataLoader workers and 64 torch threads, and the kernel throttles them all each time the quota is spent
(a throttled thread stalls every other thread waiting at an OpenMP barrier for it). DataLoader workers
(:func:`aistudio.data.datamodule.default_num_workers`), torch's threads
(:class:`aistudio.training.speed.SpeedSettings`) and the image-check pool are sized by :func:`cpu_budget`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

PROC_SELF = Path("/proc/self")


@dataclass(frozen=True)
class CpuBudget:
    """``cpus``: what to size thread and worker counts by; ``affinity``: the cores this process may run on;
    ``quota``: the tightest cgroup CPU quota over it, in CPUs (None: none)."""

    cpus: int
    affinity: int
    quota: float | None

    @property
    def limited_by_quota(self) -> bool:
        return self.quota is not None and self.cpus < self.affinity

    def as_record(self) -> dict[str, float | int | None]:
        return {"cpus": self.cpus, "affinity": self.affinity, "quota": self.quota}


def cpu_budget(proc: Path = PROC_SELF) -> CpuBudget:
    """The CPUs a process (this one by default; ``/proc/<pid>`` for another) may use: its affinity, capped by
    its cgroup quota rounded down (a quota of 2.5 CPUs gives 2 threads that are never throttled; at least 1)."""
    affinity = _affinity(proc)
    quota = cgroup_cpu_quota(proc)
    cpus = affinity if quota is None else max(1, min(affinity, math.floor(quota)))
    return CpuBudget(cpus, affinity, quota)


def _affinity(proc: Path) -> int:
    pid = 0 if proc == PROC_SELF else int(proc.name)
    try:
        return len(os.sched_getaffinity(pid))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cgroup_cpu_quota(proc: Path = PROC_SELF) -> float | None:
    """The tightest CPU quota (in CPUs) of the cgroup ``proc`` is in and of its ancestors, v1 and v2 alike;
    None when there is none or the files cannot be read."""
    try:
        memberships = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in memberships:  # "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1)
        _, controllers, path = line.split(":", 2)
        version = 2 if not controllers else 1
        if version == 1 and "cpu" not in controllers.split(","):
            continue
        for root, mount_point in _cgroup_mounts(mounts, version):
            quotas += _quotas_along(Path(mount_point), _relative(path, root), version)
    return min(quotas) if quotas else None


def _cgroup_mounts(mountinfo: list[str], version: int) -> list[tuple[str, str]]:
    """(root, mount point) of the cgroup v2 mounts, or of the v1 mounts carrying the cpu controller."""
    found = []
    for line in mountinfo:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype, options = tail[0], tail[2].split(",")
        if (version == 2 and fstype == "cgroup2") or (version == 1 and fstype == "cgroup" and "cpu" in options):
            found.append((_unescape(fields[3]), _unescape(fields[4])))
    return found


def _unescape(field: str) -> str:
    """mountinfo writes a space as \\040 (and tab, newline, backslash likewise)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def _relative(path: str, root: str) -> str:
    """The cgroup's path under a mount of ``root`` (a container sees its own cgroup as the mount's root)."""
    if root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root.rstrip("/")):]
    return path.lstrip("/")


def _quotas_along(mount_point: Path, relative: str, version: int) -> list[float]:
    """The CPU quotas set on the cgroup and on each of its ancestors up to the mount point."""
    quotas = []
    folder = mount_point / relative
    while True:
        quota = _read_quota(folder, version)
        if quota is not None:
            quotas.append(quota)
        if folder == mount_point or mount_point not in folder.parents:
            return quotas
        folder = folder.parent


def _read_quota(folder: Path, version: int) -> float | None:
    try:
        if version == 2:  # "max 100000" or "200000 100000"
            limit, period = (folder / "cpu.max").read_text().split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        limit = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return None if limit <= 0 else limit / period
    except (OSError, ValueError, ZeroDivisionError):
        return None
