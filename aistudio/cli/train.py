"""``python train.py``: open the run directory, build data/model/module/trainer, fit, test, record.

Heavy libraries are imported only once the config has been resolved and the run directory opened,
so config mistakes are reported in a fraction of a second and every run leaves a truthful run.json.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aistudio import AistudioError
from aistudio.runs.atomic import atomic_write_json
from aistudio.runs.rank import global_rank
from aistudio.runs.record import RunRecord, read_json

log = logging.getLogger("aistudio.train")

CONFIG_FILE = "config.json"


def main(cfg: DictConfig) -> float | None:
    """Hydra task function. Returns the optimized metric for sweepers (None when the run failed)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        return run_training(cfg, run_dir, overrides=list(hydra_cfg.overrides.task))
    except AistudioError as err:
        log.error("%s", err)
        if multirun:
            return None
        print(f"\nError: {err}\n(run directory: {run_dir})", file=sys.stderr)
        sys.exit(1)
    except Exception:
        if multirun:  # recorded as failed; the other jobs of the sweep still run
            log.exception("job failed (run directory: %s)", run_dir)
            return None
        raise


def resolve_config(cfg: DictConfig) -> dict[str, Any]:
    """The frozen, fully resolved config (what config.json holds); missing values are one clear error."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise AistudioError(f"config value {key} is missing or invalid ({type(err).__name__}: "
                            f"{str(err).splitlines()[0]}) — set it on the command line, e.g. {key}=...") from None


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to resume from (``resume=<run dir or .ckpt>``), after refusing impossible cases."""
    if not cfg.get("resume"):
        return None
    given = Path(str(cfg.resume)).expanduser()
    checkpoint = given if given.is_file() else run_dir / "checkpoints" / "last.ckpt"
    previous = read_json(run_dir / "run.json")
    if previous is None:
        raise AistudioError(f"resume={cfg.resume}: {run_dir} is not a run directory (no run.json)")
    if previous.get("status") == "completed":
        raise AistudioError(f"resume={cfg.resume}: that run already completed. To train further, start a "
                            f"new run from its weights: model.weights={run_dir}/checkpoints/best.ckpt")
    if not checkpoint.is_file():
        raise AistudioError(f"resume={cfg.resume}: no checkpoint at {checkpoint} — the run stopped before "
                            "its first epoch ended; start it again without resume")
    return checkpoint


def run_training(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> float | None:
    config = resolve_config(cfg)
    checkpoint = resume_checkpoint(cfg, run_dir)
    record: RunRecord | None = None
    if global_rank() == 0:
        if checkpoint is None and (run_dir / "run.json").exists():
            raise AistudioError(f"{run_dir} already holds a run; choose another hydra.run.dir or resume=it")
        record = RunRecord.create(
            run_dir, overrides=overrides or [], task=config["task"]["name"],
            model=config["model"].get("name"), monitor={"metric": config["task"]["monitor"],
                                                        "mode": config["task"]["mode"]},
            resumed_from=str(checkpoint) if checkpoint else None)
        atomic_write_json(run_dir / CONFIG_FILE, config)
    logging.captureWarnings(True)
    log.info("run directory: %s", run_dir)
    try:
        return _fit_and_test(cfg, config, run_dir, record, checkpoint)
    except KeyboardInterrupt:
        if record:
            record.mark_interrupted("KeyboardInterrupt")
        raise
    except SystemExit as exit_:
        if record and record.status == "running":
            record.mark_interrupted(f"training stopped (exit code {exit_.code}), e.g. Ctrl-C")
        raise
    except BaseException as err:
        if record:
            record.mark_failed(err)
        raise


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


def _fit_and_test(cfg: DictConfig, config: dict[str, Any], run_dir: Path, record: RunRecord | None,
                  checkpoint: Path | None) -> float | None:
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from aistudio.training.callbacks import RunDirectoryCallback
    from aistudio.training.trainer import build_trainer

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    project = datamodule.project  # validates the whole dataset before anything is built
    module = instantiate(
        cfg.task.module,
        model=_model_config(config, project.num_classes),
        optimizer=config["optimizer"],
        scheduler=config["scheduler"],
        class_names=project.classes,
        class_weights=_class_weights(config["task"]["module"].get("class_weights"), project.class_counts("train")),
        _recursive_=False, _convert_="all",
    )
    monitor, mode = config["task"]["monitor"], config["task"]["mode"]
    run_callback = RunDirectoryCallback(run_dir, record, monitor, mode, run_config=config)
    trainer = build_trainer(cfg, run_callback)
    if record:
        record.mark_running()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(checkpoint) if checkpoint else None)
    if trainer.interrupted:
        raise SystemExit(1)
    best_path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    best = run_callback.best_entry()
    test_metrics: dict[str, float] = {}
    if datamodule.has_split("test") and cfg.get("test", True):
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
        test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        log.info("test (%s): %s", "best checkpoint" if best_path else "final weights",
                 " ".join(f"{k}={v:.4g}" for k, v in test_metrics.items()))
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
    log.info("done: best %s=%s (epoch %s); run directory %s", monitor, best and best[monitor],
             best and best["epoch"], run_dir)
    return objective
