"""Where an attempt starts from: a new run, ``resume=<run dir | .ckpt>``, or a SLURM requeue of this run.

The refusals here run before anything is written, so refusing a resume leaves the resumed run untouched.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from aistudio import AistudioError
from aistudio.run_layout import LAST_CHECKPOINT, RUN_FILE
from aistudio.runs.atomic import read_json
from aistudio.runs.rank import global_rank
from aistudio.runs.record import stale_reason

log = logging.getLogger("aistudio.train")


def slurm_requeued(run_dir: Path) -> bool:
    """A SLURM job started again after a requeue (preemption, time limit, scontrol requeue): the same
    run directory already holds this run, to be continued rather than refused."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 and (run_dir / RUN_FILE).is_file()


def slurm_fields() -> dict[str, Any]:
    """The SLURM job behind this run (empty outside SLURM): which job, array task, attempt and node."""
    keys = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID", "array_task_id": "SLURM_ARRAY_TASK_ID",
            "restart_count": "SLURM_RESTART_COUNT", "node": "SLURMD_NODENAME", "partition": "SLURM_JOB_PARTITION"}
    found = {name: os.environ[key] for name, key in keys.items() if os.environ.get(key)}
    return {"slurm": found} if found else {}


def resume_checkpoint(run_dir: Path, resume: str | None, max_epochs: int | None) -> Path | None:
    """The checkpoint to resume from (``resume``, or a SLURM requeue of this run), after refusing
    impossible cases: not a run, a run still going, a completed run, more epochs done than asked for."""
    requeued = slurm_requeued(run_dir)
    if not resume and not requeued:
        return None
    reference = resume or f"{run_dir} (SLURM requeue {os.environ.get('SLURM_RESTART_COUNT')})"
    given = Path(str(resume)).expanduser() if resume else run_dir
    checkpoint = given if given.is_file() else run_dir / LAST_CHECKPOINT
    if global_rank() != 0:  # rank 0 refused what was impossible; by now it holds the run, "still going"
        return checkpoint if checkpoint.is_file() else None
    previous = read_json(run_dir / RUN_FILE)
    if previous is None:
        raise AistudioError(f"resume={reference}: not a run directory (no run.json there) — pass a run's "
                            f"directory or its {LAST_CHECKPOINT}")
    if previous.get("status") in ("pending", "running") and not stale_reason(previous) and not requeued:
        raise AistudioError(f"resume={reference}: that run is still going (pid {previous.get('pid')} on "
                            f"{previous.get('host')}) — wait for it or stop it first")
    if previous.get("status") == "completed":
        raise AistudioError(f"resume={reference}: that run already completed. To train further, start a "
                            f"new run from its weights: model.weights={run_dir}/checkpoints/best.ckpt")
    done = int(previous.get("epochs_completed") or 0)
    if max_epochs not in (None, -1) and done > int(max_epochs):
        raise AistudioError(f"resume={reference}: that run has already trained {done} epochs, more than "
                            f"trainer.max_epochs={max_epochs} — resume with trainer.max_epochs={done} or more")
    if not checkpoint.is_file():  # stopped before its first checkpoint: a retry starts over, same directory
        log.warning("resume=%s: no checkpoint at %s — training again from the start in the same run directory",
                    reference, checkpoint)
        return None
    return checkpoint
