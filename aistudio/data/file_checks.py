"""The per-entry file checks of dataset.json (image header or full decode, the parser's own files), run
in parallel with a progress report.

Opening a header with PIL is mostly Python code holding the GIL, so threads barely help: from
:data:`PROCESSES_FROM` entries the checks run in a pool of forked processes (one per core), in chunks of
records (100k PNG headers on 2 cores: about 5 s instead of 12 s). Forking is only done while the process
has a single thread (a lock held by another thread would stay locked in the child); ``spawn`` is not
used, since it re-runs the caller's script in every worker unless the script has a ``__main__`` guard.
Otherwise, and for smaller projects, a thread pool checks the files. ``scripts/bench/dataset_scale.py``
measures the whole validation.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any

from aistudio.cpus import cpu_budget
from aistudio.data.project import ImageRecord, UnreadableFile, decode_fully, header_size

if TYPE_CHECKING:
    from aistudio.data.annotation_parsers import AnnotationParser

Result = tuple[str | None, tuple[int, int] | None, str | None]  # (problem, size, warning)
PROGRESS_FROM = 2_000  # entries to check before progress is shown (a bar on a terminal, else log lines)
PROCESSES_FROM = 20_000  # entries to check before a process pool replaces the threads
log = logging.getLogger("aistudio.data.datamodule")  # the run log's name for dataset lines


def check_one(record: ImageRecord, mode: str, parser: AnnotationParser, checked: Any) -> Result:
    """(problem, size, warning) of one entry's files: header size, and with ``full`` the decode (and the
    parser's checks of its own files, e.g. mask values) training itself runs (one check, so what
    validates trains)."""
    file = record.file
    if not file.is_file():
        return (f"image file not found at {file} — fix 'file' (paths are relative to the dataset "
                "folder) or remove the entry"), None, None
    if mode == "none":
        return None, None, None
    full = mode == "full"
    try:
        size = header_size(file)
        if full:
            decode_fully(file, "image")
    except UnreadableFile as err:
        return f"unreadable image ({err}) — replace the file or remove the entry", None, None
    if (record.width, record.height) != (None, None) and (record.width, record.height) != size:
        return (f"declared size {record.width}x{record.height} but the file is {size[0]}x{size[1]} — "
                "fix 'width'/'height'"), None, None
    problem, warning = parser.check_files(record, size, full, checked)
    if problem:
        return problem, None, None
    return None, size, warning


def check_all(records: Sequence[ImageRecord], mode: str, parser: AnnotationParser, checked: Any, source: str,
              progress_from: int | None = None, processes_from: int | None = None) -> list[Result]:
    """:func:`check_one` of every record, in order; in a process pool from ``processes_from`` records
    (default :data:`PROCESSES_FROM`), with progress from ``progress_from`` (:data:`PROGRESS_FROM`)."""
    if not records:
        return []
    progress_from = PROGRESS_FROM if progress_from is None else progress_from
    processes_from = PROCESSES_FROM if processes_from is None else processes_from
    cpus = cores()  # read once: it parses the process's cgroup files
    use_processes = mode != "none" and len(records) >= processes_from and cpus > 1 and can_fork()
    threads = min(16, cpus * 4)
    if len(records) >= progress_from:
        log.info("dataset %s: checking %d images (%s)", source, len(records),
                 f"{cpus} processes" if use_processes else f"{threads} threads")
    progress = Progress(len(records), source, progress_from)
    try:
        if use_processes:
            try:
                return _run(records, progress, ProcessPoolExecutor(
                    cpus, mp_context=_fork(), initializer=_init_worker, initargs=(mode, parser, checked)))
            except Exception as err:  # noqa: BLE001 - a pool that cannot start or dies: the threads still work
                log.warning("image checks: the process pool failed (%s: %s); checking with threads instead",
                            type(err).__name__, err)
                progress.restart()
        state = (mode, parser, checked)
        return _run(records, progress, ThreadPoolExecutor(threads), state)
    finally:
        progress.close()


def _run(records: Sequence[ImageRecord], progress: Progress, pool: Executor,
         state: tuple[str, Any, Any] | None = None) -> list[Result]:
    size = max(16, min(512, math.ceil(len(records) / 100)))  # ~100 progress steps, small pickles
    chunks = [records[i:i + size] for i in range(0, len(records), size)]
    results: list[list[Result]] = [[] for _ in chunks]
    with pool:
        futures = {pool.submit(_check_chunk, chunk, state): i for i, chunk in enumerate(chunks)}
        progress.start()  # after the first submit forked the workers: the bar's thread is not forked
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            progress.advance(len(chunks[futures[future]]))
    return [result for chunk in results for result in chunk]


_worker_state: tuple[str, Any, Any] | None = None  # (mode, parser, checked) of a pool process


def _init_worker(mode: str, parser: Any, checked: Any) -> None:
    global _worker_state
    _worker_state = (mode, parser, checked)


def _check_chunk(records: Sequence[ImageRecord], state: tuple[str, Any, Any] | None) -> list[Result]:
    mode, parser, checked = state or _worker_state  # type: ignore[misc]
    return [check_one(record, mode, parser, checked) for record in records]


def can_fork() -> bool:
    """Fork only a single-threaded process (threads of any kind, as Linux lists them) that may have children."""
    import multiprocessing

    if multiprocessing.current_process().daemon or "fork" not in multiprocessing.get_all_start_methods():
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:  # no /proc: no way to tell
        return False


def _fork() -> Any:
    import multiprocessing

    return multiprocessing.get_context("fork")


def cores() -> int:
    """The CPUs this process may use (a container's CPU quota included)."""
    return cpu_budget().cpus


class Progress:
    """How far the checks are: a bar on a terminal, else a log line every 10 % (a run log shows it moving);
    nothing for fewer than ``start_from`` entries."""

    def __init__(self, total: int, source: str, start_from: int = PROGRESS_FROM, stream: Any = None):
        self.total, self.source = total, source
        self.enabled = total >= start_from
        self.stream = stream or sys.stderr
        self.done = 0
        self.next_log = 0.1
        self.started = time.perf_counter()
        self.bar: Any = None

    def start(self) -> None:
        """Show the bar (on a terminal; it runs a refresh thread)."""
        if self.enabled and self.bar is None and _is_terminal(self.stream):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("checking images"), BarColumn(), MofNCompleteColumn(),
                                    TimeRemainingColumn(), console=Console(file=self.stream), transient=True)
            self.task = self.bar.add_task("check", total=self.total, completed=self.done)
            self.bar.start()

    def advance(self, count: int) -> None:
        if not self.enabled:
            return
        self.done += count
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
            return
        if self.done >= self.total * self.next_log or self.done == self.total:
            log.info("dataset %s: checked %d of %d images (%.0f%%, %.1f s)", self.source, self.done, self.total,
                     100 * self.done / self.total, time.perf_counter() - self.started)
            self.next_log = math.floor(10 * self.done / self.total + 1) / 10

    def restart(self) -> None:
        self.close()
        self.done, self.next_log = 0, 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
