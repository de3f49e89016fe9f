"""Stop requests: SIGINT, SIGTERM (and SIGUSR1, SLURM's warning before a time limit or preemption).

Inside the training loop a signal only sets a flag; the loop stops at the next batch boundary (after
the optimizer step), ``last.ckpt`` is written from that consistent state, and the run ends as
``interrupted`` with the signal named, exiting 128 + signal number. Outside the loop (start-up,
testing) there is nothing to save and the run stops at once. A second Ctrl-C stops immediately.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from aistudio import exception_chain

log = logging.getLogger("aistudio.train")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
# SIGUSR2 is submitit's "time limit / preemption ahead" signal; it is taken over only when submitit set
# a handler, which then still requeues the job, after last.ckpt was saved
FORWARDED_SIGNALS = (signal.SIGUSR2,)


class TrainingStopped(Exception):
    """Raised at a safe point after a stop signal; carries the signal for the record and exit code."""

    def __init__(self, signum: int, where: str = ""):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}{where}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def stopped_by(error: BaseException | None) -> TrainingStopped | None:
    """The stop signal behind ``error``, if any (Hydra wraps exceptions raised inside ``_target_`` calls,
    and a signal during start-up can arrive inside one)."""
    return next((e for e in exception_chain(error) if isinstance(e, TrainingStopped)), None)


def ignore_stop_signals() -> None:
    """For child processes (DataLoader workers): a terminal's Ctrl-C, ``timeout`` or a scheduler signals
    the whole process group, and the main process alone decides how the run stops (it saves last.ckpt,
    then shuts its workers down). A worker that raised or died here would fail the run instead."""
    for signum in (*STOP_SIGNALS, *FORWARDED_SIGNALS):
        signal.signal(signum, signal.SIG_IGN)


_REAPER_REGISTERED = False


def reap_workers_at_exit() -> None:
    """Register (once, in the main process) an exit hook that kills leftover daemonic children.

    multiprocessing ends daemonic children at interpreter exit with SIGTERM and then waits for them; DataLoader
    workers ignore SIGTERM (:func:`ignore_stop_signals`), so a run that stops while a loader still has live
    workers (a stop during start-up or validation) would wait forever. atexit hooks run last-registered first,
    so this one runs before multiprocessing's own."""
    global _REAPER_REGISTERED
    if not _REAPER_REGISTERED:
        import atexit

        atexit.register(_kill_leftover_workers)
        _REAPER_REGISTERED = True


def _kill_leftover_workers() -> None:
    import multiprocessing

    children = [child for child in multiprocessing.active_children() if child.daemon]
    if not children:
        return
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report them as crashed workers
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=5)


class StopSignals:
    """Signal handlers for one run; ``deferred`` while the training loop can stop at a batch boundary."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferred = False
        self.saved_checkpoint: Path | None = None  # set by the training loop when it saved at the stop
        self._previous: dict[int, Any] = {}
        self._owner = os.getpid()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. thread-based launchers)
        for signum in (*STOP_SIGNALS, *FORWARDED_SIGNALS):
            if signum in FORWARDED_SIGNALS and signum not in self._previous and not callable(signal.getsignal(signum)):
                continue  # nobody to forward to (not under submitit): leave SIGUSR2 alone
            previous = signal.signal(signum, self._handle)
            if previous != self._handle:  # installed again at train start: keep the handler from before
                self._previous.setdefault(signum, previous)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:
            return  # a forked child (DataLoader worker) before its worker_init_fn ignored stop signals
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.received = signum
        if not self.deferred:
            raise TrainingStopped(signum)
        log.warning("received %s: stopping after the current batch and saving last.ckpt (Ctrl-C again to "
                    "stop at once)", signal.Signals(signum).name)

    def forward(self, signum: int) -> None:
        """Hand a signal to the handler that was there before (submitit's requeue), if it is one we took."""
        previous = self._previous.get(signum)
        if signum in FORWARDED_SIGNALS and callable(previous):
            previous(signum, None)

    def check(self, where: str) -> None:
        if self.received is not None:
            raise TrainingStopped(self.received, where)
