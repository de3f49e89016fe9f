"""Evaluate a trained run on a split: rebuilt from its frozen config through training's own build path
(:mod:`aistudio.training.fit`), scored by the task's own test loop, written to
``eval/<split>-<ckpt>[-<overrides>].json`` in the run directory.

Run on the run's own test split with its best checkpoint, it reproduces run.json's ``test_metrics``
(same data, transforms, batch size, precision and metric code); the result says whether it did.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from aistudio import AistudioError
from aistudio.data.project import SPLITS, Project
from aistudio.evaluation.trained_run import TrainedRun, apply_overrides, project_of
from aistudio.run_layout import EVAL_DIR
from aistudio.runs.atomic import atomic_write_json
from aistudio.runs.record import utc_now

log = logging.getLogger("aistudio.eval")
MAX_NAME_SUFFIX = 60
# overrides that change how an evaluation runs, not what it measures: left out of the result's name
# and of the "reproduces the recorded test" comparison
PRESENTATION_KEYS = ("callbacks.", "data.num_workers", "data.pin_memory", "runs_root")


def measuring_overrides(overrides: list[str]) -> list[str]:
    """The overrides that can change the figures (``data.split_index=3``, not ``data.num_workers=0``)."""
    return [o for o in overrides if not o.lstrip("+").startswith(PRESENTATION_KEYS)]


def evaluate(run: TrainedRun, ckpt: str = "best", split: str = "test", overrides: list[str] | None = None) -> dict[str, Any]:
    """Every metric of the task on ``split`` (keys ``<split>_<metric>``), per-class figures, and what they
    were computed on (checkpoint, dataset checksum, split scheme, overrides)."""
    overrides = list(overrides or [])
    config = apply_overrides(run.config, overrides)
    if split not in SPLITS:
        raise AistudioError(f"split={split}: use one of {', '.join(SPLITS)}")
    project = project_of(config["data"], "nothing was evaluated")  # every dataset problem at once, before torch
    if not project.split(split):
        raise AistudioError(f"split={split} is empty in {project.source} with data.split_index="
                            f"{project.split_index} — evaluate another split or choose another data.split_index")
    checkpoint = run.checkpoint(ckpt)
    started = time.perf_counter()
    metrics, report, saved, examples = _test(config, project, checkpoint, split)
    result = {"run": run.name, "run_dir": str(run.run_dir), "split": split, "overrides": overrides,
              "checkpoint": {"name": ckpt, "path": _relative(checkpoint, run.run_dir), **saved},
              "dataset": {**project.fingerprint(), "images": len(project.split(split)),
                          "classes": list(project.classes)},
              "metrics": metrics, **report, "created_at": utc_now(),
              "duration_s": round(time.perf_counter() - started, 3)}
    result["notes"] = _notes(run, result, config)
    result["plots"] = _plots(run, result, report, examples)
    return result


def _plots(run: TrainedRun, result: dict[str, Any], report: dict[str, Any], examples: list[Any]) -> list[str]:
    """plots/<result name>_confusion_matrix.png (or _precision_recall.png) and _examples.png."""
    from aistudio.evaluation.plotting import PLOTS_DIR, write_plots

    try:
        written = write_plots(run.run_dir / PLOTS_DIR, result_path(run, result).stem + "_",
                              result["dataset"]["classes"], report=report, examples=examples, split=result["split"])
    except Exception as err:  # noqa: BLE001 - the figures are the record; a picture must not lose them
        log.warning("plots not written: %s: %s", type(err).__name__, err)
        return []
    return [str(path.relative_to(run.run_dir)) for path in written.values()]


def _test(config: dict[str, Any], project: Project, checkpoint: Path, split: str) -> tuple[dict, dict, dict, list]:
    """(metrics, per-class report, checkpoint facts, example drawings) of the task's test loop over ``split``."""
    import lightning.pytorch as pl

    from aistudio.evaluation.loading import load_trained_module
    from aistudio.evaluation.plotting import collect_examples
    from aistudio.training.console import tidy_library_output
    from aistudio.training.fit import build_datamodule
    from aistudio.training.trainer import build_evaluation_trainer

    tidy_library_output()
    pl.seed_everything(int(config.get("seed", 0)), workers=True, verbose=False)
    datamodule = build_datamodule(config, project)
    datamodule.test_split = split
    module, _, saved = load_trained_module(config, checkpoint, project)
    results = build_evaluation_trainer(config).test(module, datamodule=datamodule, verbose=False)
    metrics = {f"{split}_{k.removeprefix('test_')}": float(v) for k, v in (results[0] if results else {}).items()}
    examples = collect_examples(module, datamodule.eval_dataset(split), datamodule.collate_fn, config["data"])
    return metrics, dict(module.test_report), saved, examples


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def _notes(run: TrainedRun, result: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """What a reader must know to trust the figures: whether they reproduce the run's recorded test,
    and whether the dataset changed since the run trained."""
    notes = []
    trained_on = run.record.get("dataset") or {}
    dataset = result["dataset"]
    if trained_on.get("sha256") and trained_on.get("file") == dataset["file"] and trained_on["sha256"] != dataset["sha256"]:
        notes.append(f"{dataset['file']} changed since the run trained (sha256 {trained_on['sha256'][:12]} "
                     f"then, {dataset['sha256'][:12]} now)")
    recorded = run.record.get("test_metrics") or {}
    recorded_checkpoint = (run.record.get("best") or {}).get("checkpoint")
    same_test = (result["split"] == "test" and not measuring_overrides(result["overrides"]) and recorded
                 and result["checkpoint"]["path"] == recorded_checkpoint)
    if same_test:
        worst = max(abs(result["metrics"].get(k, math.nan) - v) for k, v in recorded.items())
        notes.append("reproduces run.json's test_metrics" if worst == 0 else
                     f"differs from run.json's test_metrics (largest difference {worst:.3g})")
    return notes


def result_path(run: TrainedRun, result: dict[str, Any]) -> Path:
    """``eval/<split>-<ckpt>.json``; evaluations with overrides get them in the name, so they do not
    replace each other (``eval/test-best-data.split_index=3.json``)."""
    checkpoint = result["checkpoint"]["name"]
    label = checkpoint if checkpoint in ("best", "last") else Path(checkpoint).stem
    name = f"{result['split']}-{label}"
    changes = measuring_overrides(result["overrides"])
    if changes:
        suffix = re.sub(r"[^0-9A-Za-z_.=,-]+", "_", ",".join(o.lstrip("+") for o in changes))
        name += f"-{suffix[:MAX_NAME_SUFFIX]}"
    return run.run_dir / EVAL_DIR / f"{name}.json"


def write_evaluation(run: TrainedRun, result: dict[str, Any]) -> Path:
    path = result_path(run, result)
    atomic_write_json(path, result)
    return path
