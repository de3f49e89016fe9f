"""Make Lightning's DDP re-launch of ranks > 0 start *this job*, whatever Hydra mode launched it.

Lightning starts the other ranks as ``python <sys.argv[0]> <sys.argv[1:]> hydra.run.dir=<hydra.run.dir>``.
Inside a multirun that command is wrong three ways: ``sys.argv`` still holds ``-m`` and the sweep's
value lists (rank 1 re-runs the whole sweep), Optuna's sampled values are not on it (ranks train
different hyperparameters), and ``hydra.run.dir`` is the single-run pattern, not the job's folder. In a
joblib worker ``sys.argv`` is not even train.py. Before fit, rank 0 therefore rewrites them to exactly
this job: the entry script, the job's own concrete overrides, and the job's output directory.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aistudio.overrides import override_key

log = logging.getLogger("aistudio.train")

ENTRY_ENV = "AISTUDIO_ENTRY"  # train.py's absolute path, set at start-up and inherited by workers


def relaunches_script(trainer: Any) -> bool:
    """Whether fit will start the other ranks by re-running the script (DDP without a cluster launcher)."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    environment = getattr(trainer.strategy, "cluster_environment", None)
    external = bool(environment is not None and environment.creates_processes_externally)  # SLURM tasks, torchrun
    return isinstance(launcher, _SubprocessScriptLauncher) and not external


def pin_relaunch_to_this_job() -> list[str]:
    """Rewrite ``sys.argv``, ``__main__.__spec__`` and ``hydra.run.dir`` for the relaunch; returns the argv."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    import __main__

    hydra = HydraConfig.get()
    entry = os.environ.get(ENTRY_ENV) or os.path.abspath(sys.argv[0])
    # the job's Hydra overrides too (hydra.searchpath finds configs outside conf/), except those the
    # relaunch sets itself; hydra.mode=RUN: a config that turns multirun on by itself
    # (hparams_search=optuna) must not make rank 1 start a search of its own
    own = ("hydra.run.dir", "hydra.mode", "hydra.output_subdir", "hydra.job.name")
    hydra_overrides = [str(o) for o in hydra.overrides.hydra if not override_key(str(o)).startswith(own)]
    argv = [entry, *hydra_overrides, *[str(o) for o in hydra.overrides.task], "hydra.mode=RUN"]
    sys.argv = argv
    __main__.__spec__ = None  # a joblib worker's __main__ is joblib's: re-run the script, not that module
    with read_write(hydra.run):  # HydraConfig is read-only; Lightning reads the relaunch dir from here
        hydra.run.dir = hydra.runtime.output_dir
    log.info("DDP: other ranks start as %s (run dir %s)", " ".join(argv), hydra.runtime.output_dir)
    return argv


DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK", "PL_GLOBAL_SEED")


@contextmanager
def distributed_scope(trainer: Any) -> Iterator[None]:
    """Leave no DDP state behind: every rank leaves its process group, and rank 0 waits for the ranks it
    started, so the next job of the same process (a sweep) starts clean.

    - Lightning sets ``LOCAL_RANK=0`` and friends in rank 0's environment and keeps the process group. The
      next job would then believe its ranks were started externally, launch none, and talk to the previous
      job's dead rank 1 ("Connection closed by peer"). The environment is restored.
    - A rank that exits with its gloo group still alive can abort (SIGABRT) in interpreter finalisation:
      gloo's worker threads still hold tensors whose release needs the GIL. Every rank leaves the group here.
    - Lightning's child observer (a thread of rank 0 polling the started ranks every 5 s) SIGKILLs rank 0
      when one of them exits non-zero, even after the job is done, i.e. in the middle of the sweep's next
      job. :func:`reap_started_ranks` waits for them and then hands the observer nothing more to watch.
    """
    import torch.distributed as dist

    saved = {key: os.environ.get(key) for key in DISTRIBUTED_ENV}
    finished = False
    try:
        yield
        finished = True
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reap_started_ranks(getattr(getattr(trainer.strategy, "launcher", None), "procs", None), finished)


FINISHED_GRACE_S = 60.0  # the other ranks end right after rank 0 (their test step is done too)
FAILED_GRACE_S = 10.0  # rank 0 failed: the others may wait in a collective rank 0 will never join


def reap_started_ranks(procs: list[Any] | None, finished: bool) -> None:
    """Wait for the ranks rank 0 started (``Popen`` objects, rank 1 first), end those still running after a
    grace period, say which ones exited abnormally, and empty ``procs`` in place (the list Lightning's
    child observer polls: an empty list ends it)."""
    if not procs:
        return
    deadline = time.monotonic() + (FINISHED_GRACE_S if finished else FAILED_GRACE_S)
    for rank, proc in enumerate(procs, start=1):
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("DDP rank %d (pid %d) was still running after rank 0 %s; it was killed", rank, proc.pid,
                        "finished the job" if finished else "failed")
            proc.kill()
            proc.wait()
            continue
        if proc.returncode != 0 and finished:
            log.warning("DDP rank %d (pid %d) exited with code %s after the job had finished (its results are "
                        "complete; see its messages above)", rank, proc.pid, proc.returncode)
    procs.clear()
