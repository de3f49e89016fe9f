"""One build path: from a resolved config (what config.json holds) to datamodule, module and trainer,
then fit and test.

Training builds through here, and so will everything that rebuilds a run from its frozen config
(evaluation, prediction, export): the build half (:func:`build_datamodule`, :func:`build_module`) needs
only the config and the validated project, not a run session or Hydra.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aistudio import AistudioError
from aistudio.data.project import Project
from aistudio.run_layout import LAST_CHECKPOINT
from aistudio.runs.rank import global_rank
from aistudio.runs.session import RunSession

log = logging.getLogger("aistudio.train")


def model_config(model: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """``model`` with the dataset's class count filled in (a different explicit count is refused)."""
    declared = model.get("num_classes")
    if declared not in (None, num_classes):
        raise AistudioError(f"model.num_classes={declared} but the dataset has {num_classes} classes — "
                            "leave model.num_classes=null to take it from the dataset")
    return {**model, "num_classes": num_classes}


def build_datamodule(config: dict[str, Any], project: Project) -> Any:
    """The LightningDataModule of ``config["data"]`` over the already validated ``project``."""
    from hydra.utils import instantiate

    # plain lists, not OmegaConf ones: albumentations' Compose walks its ``transforms`` list on every
    # sample, which as a ListConfig cost ~0.1 ms an image (10-20% of a 224 px crop+flip+colour pipeline)
    datamodule = instantiate(config["data"], _convert_="all")
    datamodule.use_project(project)
    return datamodule


def build_module(config: dict[str, Any], class_names: list[str], class_counts: list[int] | None) -> Any:
    """The task's LightningModule: the model for ``class_names``, with what the task needs to know about
    the training data (the train split's class counts, for weights the task derives). Training passes
    its project's; a rebuilt run passes what its checkpoint recorded, so the same loss is rebuilt."""
    from hydra.utils import instantiate

    return instantiate(config["task"]["module"], model=model_config(config["model"], len(class_names)),
                       optimizer=config["optimizer"], scheduler=config["scheduler"], class_names=list(class_names),
                       class_counts=class_counts, _recursive_=False, _convert_="all")


@dataclass
class FitResult:
    """What a finished fit + test leaves for run.json and the sweeper."""

    monitor: str
    mode: str
    best: dict[str, Any] | None  # the best epoch's metrics.json entry
    best_checkpoint: str  # path, "" when no checkpoint tracks the monitor
    final_metrics: dict[str, Any] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)
    objective_metric: str = ""

    @property
    def objective(self) -> float | None:
        """The value a sweeper optimises (``optimized_metric``, else the monitor) at the best epoch."""
        return self.best.get(self.objective_metric) if self.best else None

    def record_fields(self, run_dir: Path) -> dict[str, Any]:
        """run.json's fields of a completed run."""
        best_value = self.best[self.monitor] if self.best else None
        checkpoint = str(Path(self.best_checkpoint).relative_to(run_dir)) if self.best_checkpoint else None
        return {"best": {"metric": self.monitor, "mode": self.mode, "value": best_value,
                         "epoch": self.best["epoch"] if self.best else None, "checkpoint": checkpoint},
                "final_metrics": self.final_metrics, "test_metrics": self.test_metrics,
                "objective": {"metric": self.objective_metric, "value": self.objective}}


def fit_and_test(config: dict[str, Any], project: Project, session: RunSession) -> FitResult:
    """Build everything from ``config``, fit (resuming from ``session.checkpoint``), then test the best
    checkpoint on the test split when there is one."""
    import lightning.pytorch as pl

    from aistudio.training.callbacks import RunDirectoryCallback
    from aistudio.training.console import tidy_library_output
    from aistudio.training.ddp_relaunch import distributed_scope, pin_relaunch_to_this_job, relaunches_script
    from aistudio.training.graceful_stop import GracefulStop
    from aistudio.training.resume_state import ResumeState
    from aistudio.training.trainer import build_trainer

    tidy_library_output()
    pl.seed_everything(int(config["seed"]), workers=True, verbose=False)
    datamodule = build_datamodule(config, project)
    module = build_module(config, project.classes, project.class_counts("train"))
    monitor, mode = config["task"]["monitor"], config["task"]["mode"]
    ties = bool(((config.get("callbacks") or {}).get("model_checkpoint") or {}).get("save_on_tie", True))
    run_callback = RunDirectoryCallback(session.run_dir, session.record, monitor, mode, run_config=config,
                                        best_on_tie=ties)
    stop = GracefulStop(session.signals, session.run_dir / LAST_CHECKPOINT)
    trainer = build_trainer(config, run_callback, extra_callbacks=[ResumeState(), stop])
    relaunch = global_rank() == 0 and relaunches_script(trainer)
    if relaunch:
        pin_relaunch_to_this_job()
    session.mark_running()
    with distributed_scope(trainer):
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(session.checkpoint) if session.checkpoint else None)
        if trainer.interrupted:
            raise SystemExit(1)
        best_path = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor == monitor), "")
        test_metrics = _test(config, trainer, module, datamodule, best_path)
    if global_rank() == 0 and config.get("plots", True):
        _write_plots(config, session, trainer, module, datamodule, run_callback, test_metrics)
    return FitResult(monitor, mode, run_callback.best_entry(), best_path,
                     run_callback.entries[-1] if run_callback.entries else {}, test_metrics,
                     config.get("optimized_metric") or monitor)


def _write_plots(config: dict[str, Any], session: RunSession, trainer: Any, module: Any, datamodule: Any,
                 run_callback: Any, test_metrics: dict[str, float]) -> None:
    """plots/ (curves; test confusion matrix or PR curves; examples of the best checkpoint, which the test
    loaded) and the same in TensorBoard with the HParams entry. A picture never fails a trained run."""
    from aistudio.evaluation.plotting import (
        PLOTS_DIR,
        collect_examples,
        hparams_of,
        log_to_tensorboard,
        write_plots,
    )

    try:
        split = "test" if test_metrics else "val"
        examples = collect_examples(module, datamodule.eval_dataset(split), datamodule.collate_fn, config["data"])
        plots = write_plots(session.run_dir / PLOTS_DIR, f"{split}_", module.class_names, run_callback.entries,
                            module.test_report if test_metrics else None, examples, split)
        best = run_callback.best_entry()
        best_value = {f"best_{run_callback.monitor}": float(best[run_callback.monitor])} if best else {}
        record = session.record.data if session.record else {}
        log_to_tensorboard(trainer.loggers, plots, trainer.global_step, hparams_of(record, config),
                           {**best_value, **test_metrics}, best_value)
        log.info("plots: %s", ", ".join(str(p.relative_to(session.run_dir)) for p in plots.values()))
    except Exception as err:  # noqa: BLE001 - reported, and the run still completes
        log.warning("plots not written: %s: %s", type(err).__name__, err)


def _test(config: dict[str, Any], trainer: Any, module: Any, datamodule: Any, best_path: str) -> dict[str, float]:
    """Test metrics of the best checkpoint (the final weights when none is tracked); {} without a test split."""
    if not datamodule.has_split("test") or not config.get("test", True):
        return {}
    results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    log.info("test (%s): %s", "best checkpoint" if best_path else "final weights",
             " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return metrics
