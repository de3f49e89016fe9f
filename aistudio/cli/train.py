"""``python train.py``: open the run directory, build data/model/module/trainer, fit, test, record.

Heavy libraries are imported only once the config has been resolved and the run directory opened,
so config mistakes are reported in a fraction of a second and every run leaves a truthful run.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aistudio import AistudioError, user_error
from aistudio.config import config_summary
from aistudio.data.project import Project, project_from_config
from aistudio.run_layout import CONFIG_FILE, LAST_CHECKPOINT, RUN_FILE
from aistudio.runs.atomic import atomic_write_json, read_json, remove_stale_temp_files
from aistudio.runs.failures import explain_failure
from aistudio.runs.heartbeat import Heartbeat
from aistudio.runs.lock import RunLock, device_set
from aistudio.runs.rank import global_rank
from aistudio.runs.record import HEARTBEAT_INTERVAL_S, RunRecord, new_run_id, stale_reason
from aistudio.runs.stop import StopSignals, TrainingStopped, stopped_by
from aistudio.training.config_checks import check_config

log = logging.getLogger("aistudio.train")


def main(cfg: DictConfig) -> float | None:
    """Hydra task function. Returns the optimized metric for sweepers (None when the run failed)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    # a sweep's jobs record a type error in their own run.json instead
    project = None if multirun else _refuse_bad_config(cfg, run_dir)
    try:
        return run_training(cfg, run_dir, overrides=list(hydra_cfg.overrides.task), project=project)
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
        where = f"\n(run directory: {run_dir})" if (run_dir / RUN_FILE).exists() else ""
        print(f"\nError: {problem}{where}", file=sys.stderr)
        sys.exit(1)


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
        _remove_unused_run_dir(run_dir)
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(1)
    return project


def resolve_config(cfg: DictConfig) -> dict[str, Any]:
    """The frozen, fully resolved config (what config.json holds); missing values are one clear error."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or "?"
        raise AistudioError(f"config value {key} is required but not set — add {key}=... to the command line") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise AistudioError(f"config value {key} cannot be resolved: {str(err).splitlines()[0]} — "
                            f"fix it on the command line or in conf/ ({key}=...)") from None


def slurm_requeued(run_dir: Path) -> bool:
    """A SLURM job started again after a requeue (preemption, time limit, scontrol requeue): the same
    run directory already holds this run, to be continued rather than refused."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 and (run_dir / RUN_FILE).is_file()


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to resume from (``resume=<run dir or .ckpt>``, or a SLURM requeue of this run),
    after refusing impossible cases."""
    requeued = slurm_requeued(run_dir)
    if not cfg.get("resume") and not requeued:
        return None
    reference = cfg.get("resume") or f"{run_dir} (SLURM requeue {os.environ.get('SLURM_RESTART_COUNT')})"
    given = Path(str(cfg.resume)).expanduser() if cfg.get("resume") else run_dir
    checkpoint = given if given.is_file() else run_dir / LAST_CHECKPOINT
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
    done, max_epochs = int(previous.get("epochs_completed") or 0), OmegaConf.select(cfg, "trainer.max_epochs")
    if max_epochs not in (None, -1) and done > int(max_epochs):
        raise AistudioError(f"resume={reference}: that run has already trained {done} epochs, more than "
                            f"trainer.max_epochs={max_epochs} — resume with trainer.max_epochs={done} or more")
    if not checkpoint.is_file():  # stopped before its first checkpoint: a retry starts over, same directory
        log.warning("resume=%s: no checkpoint at %s — training again from the start in the same run directory",
                    reference, checkpoint)
        return None
    return checkpoint


def slurm_fields() -> dict[str, Any]:
    """The SLURM job behind this run (empty outside SLURM): which job, array task, attempt and node."""
    keys = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID", "array_task_id": "SLURM_ARRAY_TASK_ID",
            "restart_count": "SLURM_RESTART_COUNT", "node": "SLURMD_NODENAME", "partition": "SLURM_JOB_PARTITION"}
    found = {name: os.environ[key] for name, key in keys.items() if os.environ.get(key)}
    return {"slurm": found} if found else {}


def run_training(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None,
                 project: Project | None = None) -> float | None:
    """Run one training job in ``run_dir``; every outcome ends in run.json (failed runs keep their files).

    Rank 0 records the run, holds the project/devices lock (unless ``exclusive=false`` or a scheduler
    placed the job) and keeps a heartbeat; stop signals end training at a batch boundary.
    """
    checkpoint = resume_checkpoint(cfg, run_dir)  # refusals here leave the resumed run untouched
    signals = StopSignals()
    record: RunRecord | None = None
    lock: RunLock | None = None
    if global_rank() == 0:
        if checkpoint is None and (run_dir / RUN_FILE).exists() and not cfg.get("resume") \
                and not slurm_requeued(run_dir):
            raise AistudioError(f"{run_dir} already holds a run; choose another hydra.run.dir or resume={run_dir}")
        run_id = (read_json(run_dir / RUN_FILE) or {}).get("id") or new_run_id()
        lock = _acquire_lock(cfg, run_dir, run_id)  # before any record is touched: a refused start writes nothing
        try:
            remove_stale_temp_files(run_dir)  # left by a process killed mid-write
            record = RunRecord.create(
                run_dir, id=run_id, overrides=overrides or [], task=OmegaConf.select(cfg, "task.name", default=None),
                model=OmegaConf.select(cfg, "model.name", default=None),
                resumed_from=str(checkpoint) if checkpoint else None, **slurm_fields())
        except BaseException:
            if lock:
                lock.release()
            raise
    logging.captureWarnings(True)
    log.info("run directory: %s", run_dir)
    signals.install()  # restored in `finally`, whatever happens from here on
    try:
        config = resolve_config(cfg)
        log.info(config_summary(config))
        # every process logs what it trains: DDP ranks must agree (tests compare these lines)
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
        log.info("process rank %d (pid %d): config sha256 %s", global_rank(), os.getpid(), digest)
        # every dataset problem at once, before torch is imported (``project``: validated already)
        project = project or project_from_config(config["data"])
        check_config(config)  # unknown model name, optimizer/trainer arguments: one line, nothing built yet
        if record:
            record.update(monitor={"metric": config["task"]["monitor"], "mode": config["task"]["mode"]},
                          data_project=str(config["data"].get("project")))
            atomic_write_json(run_dir / CONFIG_FILE, config)
        interval = float(cfg.get("heartbeat_s") or HEARTBEAT_INTERVAL_S)
        with Heartbeat(record, interval) if record else contextlib.nullcontext():
            return _fit_and_test(cfg, config, project, run_dir, record, checkpoint, signals)
    except BaseException as err:
        stop = stopped_by(err)
        if stop is not None:  # during start-up it may arrive inside an import that Hydra wraps in its own error
            log.warning("run interrupted: %s", stop)
            if record:
                saved = f" ({signals.saved_checkpoint.name} saved there)" if signals.saved_checkpoint else ""
                record.mark_interrupted(f"{stop}{saved}")
            signals.forward(stop.signum)  # under submitit: its handler requeues the job (and exits)
            if stop is err:
                raise
            raise stop from err
        if isinstance(err, KeyboardInterrupt):
            if record:
                record.mark_interrupted("KeyboardInterrupt")
            raise
        if isinstance(err, SystemExit):
            if record and record.status == "running":
                record.mark_interrupted(f"training stopped (exit code {err.code}), e.g. Ctrl-C")
            raise
        problem = user_error(err) or explain_failure(err, _data_settings(cfg))
        if problem is not None:
            log.error("run failed: %s", problem)
        else:
            log.exception("run failed with %s", type(err).__name__)
        if record:
            record.mark_failed(problem or err)
        if problem is not None and problem is not user_error(err):
            raise problem from err
        raise
    finally:
        if lock:
            lock.release()
        signals.restore()


def _data_settings(cfg: DictConfig) -> dict[str, Any]:
    """The data settings an out-of-memory message quotes (never raising: it runs while handling an error)."""
    settings = {}
    for key in ("batch_size", "image_size", "num_workers"):
        try:
            settings[key] = OmegaConf.select(cfg, f"data.{key}", default="?")
        except Exception:  # noqa: BLE001 - an unresolvable value just is not quoted
            settings[key] = "?"
    return {"data": settings}


def _parallel_sweep_job() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra = HydraConfig.get()
    return hydra.mode == RunMode.MULTIRUN and "BasicLauncher" not in str(hydra.launcher.get("_target_", ""))


def _acquire_lock(cfg: DictConfig, run_dir: Path, run_id: str) -> RunLock | None:
    """One active run per project and device set. Exempt: jobs placed by a scheduler (SLURM) and jobs of
    a parallel launcher (joblib), which share the devices because the user asked for parallel jobs.

    Taken before the run is recorded, from the two config values it needs; when they cannot be resolved
    the run fails on that right after (recorded), before anything is built."""
    if not cfg.get("exclusive", True) or os.environ.get("SLURM_JOB_ID") or _parallel_sweep_job():
        return None
    try:
        project = OmegaConf.to_container(cfg.data, resolve=True).get("project")  # type: ignore[union-attr]
        hardware = OmegaConf.to_container(cfg.hardware, resolve=True) if cfg.get("hardware") else {}
    except OmegaConfBaseException:
        return None
    try:  # an impossible device setting is refused here too, before anything is written
        lock = RunLock(project, device_set(hardware or {}))  # type: ignore[arg-type]
        lock.acquire(run_dir, run_id)
    except AistudioError:
        _remove_unused_run_dir(run_dir)
        raise
    return lock


def _remove_unused_run_dir(run_dir: Path) -> None:
    """A refused new single run leaves no directory behind (Hydra made it, with only its own files)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.RUN and not (run_dir / RUN_FILE).exists() \
            and {p.name for p in run_dir.iterdir()} <= {".hydra", "logs"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def _model_config(config: dict[str, Any], num_classes: int) -> dict[str, Any]:
    model = dict(config["model"])
    declared = model.get("num_classes")
    if declared not in (None, num_classes):
        raise AistudioError(f"model.num_classes={declared} but the dataset has {num_classes} classes — "
                            "leave model.num_classes=null to take it from the dataset")
    model["num_classes"] = num_classes
    return model


def _class_weights(setting: Any, counts: list[int]) -> list[float] | None:
    """``balanced`` -> n_samples / (n_classes * count) per class, as scikit-learn does."""
    if setting in (None, "none"):
        return None
    if setting == "balanced":
        total = sum(counts)
        return [total / (len(counts) * c) if c else 0.0 for c in counts]
    if len(setting) != len(counts):
        raise AistudioError(f"task.module.class_weights has {len(setting)} values for {len(counts)} classes")
    return [float(w) for w in setting]


def _fit_and_test(cfg: DictConfig, config: dict[str, Any], project: Project, run_dir: Path,
                  record: RunRecord | None, checkpoint: Path | None, signals: StopSignals) -> float | None:
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from aistudio.training.callbacks import RunDirectoryCallback
    from aistudio.training.console import tidy_library_output
    from aistudio.training.ddp_relaunch import distributed_scope, pin_relaunch_to_this_job, relaunches_script
    from aistudio.training.graceful_stop import GracefulStop
    from aistudio.training.resume_state import ResumeState
    from aistudio.training.trainer import build_trainer

    tidy_library_output()
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.use_project(project)
    extra = {}
    if "class_weights" in config["task"]["module"]:  # tasks whose loss takes per-class weights
        extra["class_weights"] = _class_weights(config["task"]["module"]["class_weights"],
                                                project.class_counts("train"))
    module = instantiate(
        cfg.task.module,
        model=_model_config(config, project.num_classes),
        optimizer=config["optimizer"],
        scheduler=config["scheduler"],
        class_names=project.classes,
        _recursive_=False, _convert_="all", **extra,
    )
    monitor, mode = config["task"]["monitor"], config["task"]["mode"]
    ties = bool(OmegaConf.select(cfg, "callbacks.model_checkpoint.save_on_tie", default=True))
    run_callback = RunDirectoryCallback(run_dir, record, monitor, mode, run_config=config, best_on_tie=ties)
    stop = GracefulStop(signals, run_dir / LAST_CHECKPOINT)
    trainer = build_trainer(cfg, run_callback, extra_callbacks=[ResumeState(), stop])
    relaunch = global_rank() == 0 and relaunches_script(trainer)
    if relaunch:
        pin_relaunch_to_this_job()
    if record:
        record.mark_running()
    with distributed_scope() if relaunch else contextlib.nullcontext():
        best_path, best, test_metrics = _fit_then_test(cfg, trainer, module, datamodule, run_callback, monitor,
                                                       checkpoint)
    objective_name = cfg.get("optimized_metric") or monitor
    objective = best.get(objective_name) if best else None
    if record:
        record.mark_completed(
            best={"metric": monitor, "mode": mode, "value": best[monitor] if best else None,
                  "epoch": best["epoch"] if best else None,
                  "checkpoint": str(Path(best_path).relative_to(run_dir)) if best_path else None},
            final_metrics=run_callback.entries[-1] if run_callback.entries else {},
            test_metrics=test_metrics, objective={"metric": objective_name, "value": objective},
        )
    log.info("done: best %s=%s (epoch %s); run directory %s", monitor,
             f"{best[monitor]:.4g}" if best else None, best and best["epoch"], run_dir)
    return objective


def _fit_then_test(cfg: DictConfig, trainer: Any, module: Any, datamodule: Any, run_callback: Any, monitor: str,
                   checkpoint: Path | None) -> tuple[str, dict[str, Any] | None, dict[str, float]]:
    """Fit, then evaluate the best checkpoint on the test split: (best path, best epoch entry, test metrics)."""
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(checkpoint) if checkpoint else None)
    if trainer.interrupted:
        raise SystemExit(1)
    best_path = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor == monitor), "")
    best = run_callback.best_entry()
    test_metrics: dict[str, float] = {}
    if datamodule.has_split("test") and cfg.get("test", True):
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
        test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        log.info("test (%s): %s", "best checkpoint" if best_path else "final weights",
                 " ".join(f"{k}={v:.4g}" for k, v in test_metrics.items()))
    return best_path, best, test_metrics
