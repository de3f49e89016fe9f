"""``python train.py``: the Hydra task function. It turns the composed config into a run session
(:mod:`aistudio.runs.session`) around the one build path (:mod:`aistudio.training.fit`).

Heavy libraries are imported only once the config has been resolved and the run directory opened,
so config mistakes are reported in a fraction of a second and every run leaves a truthful run.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from types import EllipsisType

from omegaconf import DictConfig, OmegaConf

from aistudio import AistudioError, user_error
from aistudio.cli.hydra_job import is_sweep_job, parallel_sweep_job, remove_unused_run_dir
from aistudio.config import config_summary, resolve_config
from aistudio.data.project import Project, project_from_config
from aistudio.run_layout import RUN_FILE
from aistudio.runs.failures import quoted_settings
from aistudio.runs.lock import RunLock, run_lock
from aistudio.runs.rank import global_rank
from aistudio.runs.resume import resume_checkpoint
from aistudio.runs.session import RunSession
from aistudio.runs.stop import TrainingStopped
from aistudio.training.config_checks import check_config

log = logging.getLogger("aistudio.train")


def main(cfg: DictConfig) -> float | None:
    """Hydra task function. Returns the optimized metric for sweepers (None when the run failed)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    multirun = is_sweep_job()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        if multirun:  # a sweep's jobs record a refusal or a type error in their own run.json instead
            return run_training(cfg, run_dir, overrides=list(hydra_cfg.overrides.task))
        # what can be refused without torch is refused first (a refusal takes a second, not the imports' seconds)
        checkpoint = _resume_checkpoint(cfg, run_dir)
        _refuse_while_busy(cfg)
        project = _refuse_bad_config(cfg, run_dir)
        return run_training(cfg, run_dir, overrides=list(hydra_cfg.overrides.task), project=project,
                            checkpoint=checkpoint)
    except TrainingStopped as stop:  # recorded as interrupted; a signal stops a whole sweep too
        print(f"\nStopped by {stop.signal_name}: run recorded as interrupted, resume with "
              f"python train.py resume={run_dir}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except Exception as err:
        problem = user_error(err)
        if multirun:  # recorded as failed (run.json, training.log); the other jobs of the sweep still run
            return None
        if problem is None:
            raise
        remove_unused_run_dir(run_dir)  # a refused start (lock held, impossible devices) leaves nothing
        where = f"\n(run directory: {run_dir})" if (run_dir / RUN_FILE).exists() else ""
        print(f"\nError: {problem}{where}", file=sys.stderr)
        sys.exit(1)


def run_training(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None,
                 project: Project | None = None, checkpoint: Path | None | EllipsisType = ...) -> float | None:
    """Run one training job in ``run_dir``; every outcome ends in run.json (failed runs keep their files).
    ``checkpoint``: what :func:`_resume_checkpoint` found already (``...``: look it up here)."""
    from aistudio.training.fit import fit_and_test

    if checkpoint is ...:
        checkpoint = _resume_checkpoint(cfg, run_dir)
    fields = {"overrides": overrides or [], "task": OmegaConf.select(cfg, "task.name", default=None),
              "model": OmegaConf.select(cfg, "model.name", default=None)}
    with RunSession(run_dir, checkpoint=checkpoint, resuming=bool(cfg.get("resume")), lock=_lock_for(cfg),
                    fields=fields, failure_context=quoted_settings(cfg)) as session:
        config = resolve_config(cfg)
        log.info(config_summary(config))
        # every process logs what it trains: DDP ranks must agree (tests compare these lines)
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
        log.info("process rank %d (pid %d): config sha256 %s", global_rank(), os.getpid(), digest)
        # every dataset problem at once, before torch is imported (``project``: validated already)
        project = project or project_from_config(config["data"])
        check_config(config)  # unknown model name, optimizer/trainer arguments: one line, nothing built yet
        session.begin(config, heartbeat_s=cfg.get("heartbeat_s"), dataset=project.fingerprint())
        result = fit_and_test(config, project, session)
        session.complete(**result.record_fields(run_dir))
    best = result.best
    log.info("done: best %s=%s (epoch %s); run directory %s", result.monitor,
             f"{best[result.monitor]:.4g}" if best else None, best and best["epoch"], run_dir)
    return result.objective


def _resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """What ``resume=`` (or a SLURM requeue) continues from; impossible resumes are refused, the run untouched."""
    return resume_checkpoint(run_dir, cfg.get("resume"), OmegaConf.select(cfg, "trainer.max_epochs"))


def _refuse_while_busy(cfg: DictConfig) -> None:
    """A start the run lock would refuse is refused before the heavy imports (seconds), asking the lock
    without taking it (:meth:`RunLock.holder`). The session still takes it: a run that starts in between
    is refused there."""
    if global_rank() != 0:  # DDP ranks > 0 take no lock: rank 0 holds it for the run
        return
    try:
        lock = _lock_for(cfg)
    except AistudioError:  # an impossible device setting: reported where the session takes the lock
        return
    holder = lock.holder() if lock else None
    if holder is not None:
        raise lock.busy_error(holder)


def _refuse_bad_config(cfg: DictConfig, run_dir: Path) -> Project | None:
    """A value of the wrong type (``trainer.max_epochs=three``) is one line before a run is recorded: the
    directory Hydra made for it is removed again (a resumed run's is kept). The dataset is validated
    first (returned, so it is not validated twice): a dataset problem is still reported before torch is
    imported, and recorded as the run's failure by :func:`run_training` like an unresolvable value."""
    from aistudio.training.config_checks import check_types

    try:
        config = resolve_config(cfg)
        project = project_from_config(config["data"])
    except AistudioError:
        return None
    try:
        check_types(config)  # imports the targets (Lightning's Trainer) to read their signatures
    except AistudioError as err:
        remove_unused_run_dir(run_dir)
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(1)
    return project


def _lock_for(cfg: DictConfig) -> RunLock | None:
    """One active run per project and device set. Exempt: ``exclusive=false``, jobs placed by a scheduler
    (SLURM) and jobs of a parallel launcher (joblib), which share the devices because the user asked for
    parallel jobs. When the two values it needs cannot be resolved, the run fails on that right after
    it is recorded, before anything is built. An impossible device setting is refused here."""
    if os.environ.get("SLURM_JOB_ID") or parallel_sweep_job():
        return None
    return run_lock(cfg)
