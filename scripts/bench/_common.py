"""Helpers shared by the benchmark scripts: repo paths, temp run/data dirs, plain-text tables, a run's
log lines (when did training take its first step), and the peak memory of a process tree.

Benchmarks must never write into the repository, so every script points AISTUDIO_RUNS_DIR and
AISTUDIO_DATA_DIR at a temp folder (removed at exit unless AISTUDIO_BENCH_KEEP=1).
"""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def isolate(name: str, data_dir: str | None = None) -> tuple[Path, Path]:
    """Set AISTUDIO_RUNS_DIR (always fresh), AISTUDIO_DATA_DIR (fresh unless ``data_dir``) and, unless set,
    AISTUDIO_CACHE_DIR (the image-check cache: never the user's ~/.cache); return the first two."""
    root = Path(tempfile.mkdtemp(prefix=f"aistudio-bench-{name}-"))
    if os.environ.get("AISTUDIO_BENCH_KEEP") == "1":
        print(f"(keeping {root})")
    else:
        atexit.register(shutil.rmtree, root, True)
    runs = root / "runs"
    data = Path(data_dir).expanduser().resolve() if data_dir else root / "data"
    runs.mkdir()
    data.mkdir(parents=True, exist_ok=True)
    os.environ["AISTUDIO_RUNS_DIR"] = str(runs)
    os.environ["AISTUDIO_DATA_DIR"] = str(data)
    os.environ.setdefault("AISTUDIO_CACHE_DIR", str(root / "checks"))
    return runs, data


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned text table; floats shown with 3 significant decimals."""
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def system_busy_s() -> float:
    """CPU seconds all processes have used since boot, over all cores (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (and their waited-for descendants)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class OtherLoad:
    """Share of the machine's cores used by *other* processes during a block: a benchmark on a shared
    machine can then say when its figure was taken next to someone else's work::

        with OtherLoad() as other:
            ...  # children started here must have ended (been waited for) by the end of the block
        other.share  # 0.0 .. 1.0 of all cores
    """

    def __enter__(self) -> OtherLoad:
        self._busy, self._own, self._wall = system_busy_s(), own_cpu_s(), time.monotonic()
        self.share = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self._wall, 1e-6)
        others = (system_busy_s() - self._busy) - (own_cpu_s() - self._own)
        self.share = max(0.0, others / (wall * (os.cpu_count() or 1)))


def wait_quiet(max_s: float = 120.0, busy_below: float = 0.1, window_s: float = 1.0) -> float:
    """Wait (at most ``max_s``) until the machine is nearly idle: less than ``busy_below`` of all cores used
    over ``window_s``. Call it while this process is idle; returns the last share measured."""
    deadline = time.monotonic() + max_s
    while True:
        busy = system_busy_s()
        time.sleep(window_s)
        share = (system_busy_s() - busy) / (window_s * (os.cpu_count() or 1))
        if share < busy_below or time.monotonic() > deadline:
            return share


def log_lines(log: Path) -> list[tuple[float, str]]:
    """(wall time stamped on the line, message) of each line of a run's logs/training.log that has a stamp."""
    lines = []
    for line in log.read_text(errors="replace").splitlines() if log.is_file() else []:
        if line.startswith("[") and "]" in line:
            try:
                stamp = datetime.strptime(line[1:line.index("]")], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            lines.append((stamp, line.split(" - ", 1)[-1]))
    return lines


def first_step_at(run_dir: Path, deadline: float) -> float:
    """Wall time of the first ``train batch`` line in the run's log (the time stamped on the line), waiting
    for it until ``deadline`` (time.monotonic). The run needs ``callbacks.progress_bar.kind=log
    callbacks.progress_bar.interval_s=0`` to log every step."""
    log = run_dir / "logs" / "training.log"
    while time.monotonic() < deadline:
        for stamp, message in log_lines(log):
            if " train batch " in f" {message}":
                return stamp
        time.sleep(0.05)
    raise SystemExit(f"no training step in {log}")


def _proc_status_kb(pid: int, *fields: str) -> dict[str, int]:
    """Memory fields of /proc/<pid>/status in kB ({} once the process is gone; absent fields: 0)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values = dict.fromkeys(fields, 0)
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in values:
            values[name] = int(value.split()[0])
    return values


def _pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` in kB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


class PeakRss:
    """Peak resident memory of process ``pid`` plus all its descendants (DataLoader workers...), sampled
    from /proc every ``interval_s`` in a daemon thread (Linux; no psutil needed)::

        with PeakRss(proc.pid, pss_interval_s=2.0) as rss:
            proc.wait()
        rss.peak_total_mb, rss.peak_main_mb, rss.main_hwm_mb, rss.peak_processes, rss.peak_pss_mb, rss.samples

    ``peak_total_mb``: the largest sum of VmRSS over the tree in one sample (a page that forked workers
    share with their parent counts once per process, so this errs high); ``peak_main_mb``: the largest
    VmRSS of ``pid`` alone; ``main_hwm_mb``: the kernel's own high-water mark of ``pid`` (VmHWM: exact, not
    sampled, as of the last sample before it ended); ``peak_processes``: processes summed at the total's
    peak. ``peak_pss_mb`` (None unless ``pss_interval_s``): the largest sum of PSS, where a shared page
    is split between the processes sharing it, i.e. the memory the tree really occupies; reading it
    costs ~20 ms of CPU per process (smaps_rollup), hence its own, longer period. MB = MiB. A peak
    shorter than the period can be missed by the sums (never by ``main_hwm_mb``).
    """

    def __init__(self, pid: int, interval_s: float = 0.2, pss_interval_s: float | None = None):
        self.pid, self.interval_s, self.pss_interval_s = pid, interval_s, pss_interval_s
        self.peak_total_mb = self.peak_main_mb = self.main_hwm_mb = 0.0
        self.peak_pss_mb: float | None = None
        self.peak_processes = self.samples = 0
        self._next_pss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"PeakRss-{pid}", daemon=True)

    def sample(self) -> float:
        """Take one sample now; returns the tree's total RSS in MB (0 once the process is gone)."""
        main = _proc_status_kb(self.pid, "VmRSS", "VmHWM")
        if not main:
            return 0.0
        children = descendants(self.pid)
        workers = [_proc_status_kb(child, "VmRSS").get("VmRSS", 0) for child in children]
        total = (main["VmRSS"] + sum(workers)) / 1024
        self.samples += 1
        self.peak_main_mb = max(self.peak_main_mb, main["VmRSS"] / 1024)
        self.main_hwm_mb = max(self.main_hwm_mb, main["VmHWM"] / 1024)
        if total > self.peak_total_mb:
            self.peak_total_mb, self.peak_processes = total, 1 + sum(1 for kb in workers if kb)
        if self.pss_interval_s is not None and time.monotonic() >= self._next_pss:
            self._next_pss = time.monotonic() + self.pss_interval_s
            pss = sum(_pss_kb(pid) for pid in (self.pid, *children)) / 1024
            self.peak_pss_mb = max(self.peak_pss_mb or 0.0, pss)
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def start(self) -> PeakRss:
        self._thread.start()
        return self

    def stop(self) -> PeakRss:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self

    def __enter__(self) -> PeakRss:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
