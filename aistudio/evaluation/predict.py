"""Predict with a trained run on new images: ``python predict.py run=<run> input=<image | folder | dataset.json>``,
or with a file the run was exported to (``run=<file.onnx>``, :mod:`aistudio.evaluation.exported_model`).

:func:`prepare` checks everything a user can get wrong — the run, the checkpoint, the options, the input
(a missing path, an empty folder, a dataset.json that does not validate), the output folder — before
torch is imported, and writes nothing. :func:`predict` then rebuilds the run's model from its frozen
config (:mod:`aistudio.evaluation.prediction_model`), runs it over the images in batches with the run's
validation preprocessing, and streams each batch to the task's writers
(:mod:`aistudio.evaluation.prediction_writers`) in a hidden folder that becomes ``out`` when complete,
with ``summary.json``: images predicted, the files that could not be read and why, the timing.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aistudio import AistudioError, user_path
from aistudio.data.project import dataset_file
from aistudio.evaluation.exported_model import ExportedModel
from aistudio.evaluation.prediction_inputs import InputImage, PredictionInputs, resolve_inputs
from aistudio.evaluation.prediction_writers import (
    MASK_FORMATS,
    PREDICTION_TASKS,
    SUMMARY_FILE,
    OutputFolder,
    make_writers,
)
from aistudio.evaluation.trained_run import TrainedRun, apply_overrides
from aistudio.runs.atomic import atomic_write_json
from aistudio.runs.record import utc_now

PREDICTIONS_DIR = "predictions"  # <run>/predictions/<input>-<ckpt>/ by default


@dataclass
class PredictOptions:
    """predict.py's own options (conf/predict.yaml)."""

    batch_size: int | None = None  # default: the run's eval batch size
    topk: int = 5
    score_threshold: float = 0.05
    overlay_threshold: float = 0.5
    save_overlays: bool = False
    mask_format: str = "index"

    def checked(self) -> PredictOptions:
        """The options with their types checked: a wrong one is an error naming the key and what it takes."""
        def number(key: str, kind: type, low: float, high: float | None = None) -> Any:
            value = getattr(self, key)
            try:
                converted = kind(value)
                if isinstance(value, bool) or (kind is int and converted != float(value)):
                    raise ValueError
            except (TypeError, ValueError):
                converted = None
            if converted is None or converted < low or (high is not None and converted > high):
                span = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise AistudioError(f"{key}={value}: takes {'an integer' if kind is int else 'a number'} {span}")
            return converted

        if not isinstance(self.save_overlays, bool):
            raise AistudioError(f"save_overlays={self.save_overlays}: takes true or false")
        if self.mask_format not in MASK_FORMATS:
            raise AistudioError(f"mask_format={self.mask_format}: use one of {', '.join(MASK_FORMATS)}")
        batch_size = None if self.batch_size is None else number("batch_size", int, 1)
        return PredictOptions(batch_size, number("topk", int, 0), number("score_threshold", float, 0.0, 1.0),
                              number("overlay_threshold", float, 0.0, 1.0), self.save_overlays, self.mask_format)


@dataclass
class PredictionJob:
    """A checked prediction, ready to run (nothing written yet)."""

    run: TrainedRun | ExportedModel
    config: dict[str, Any]  # the run's config (or the export's) with the overrides
    task: str
    ckpt: str
    checkpoint: Path  # or the .onnx file
    inputs: PredictionInputs
    out: OutputFolder
    options: PredictOptions
    overrides: list[str] = field(default_factory=list)
    mask_values: list[int] | None = None  # mask_format=values: the training dataset's (None: identity)

    @property
    def batch_size(self) -> int:
        data = self.config["data"]
        return int(self.options.batch_size or data.get("eval_batch_size") or data.get("batch_size") or 1)


def prepare(run: TrainedRun | ExportedModel, input: Any, ckpt: str = "best", split: str = "all", out: str | None = None,
            options: PredictOptions | None = None, overrides: list[str] | None = None) -> PredictionJob:
    """Check everything before any heavy import (see the module docstring)."""
    options = (options or PredictOptions()).checked()
    overrides = list(overrides or [])
    config = apply_overrides(run.config, overrides)
    task = str((config.get("task") or {}).get("name") or "")
    if task not in PREDICTION_TASKS:
        raise AistudioError(f"run {run.name} is a {task or 'unknown'} run: predict.py writes "
                            f"{', '.join(PREDICTION_TASKS)} predictions")
    if options.mask_format == "values" and task != "semantic_segmentation":
        raise AistudioError(f"mask_format=values: only semantic segmentation writes label images (run {run.name} "
                            f"is {task}) — leave mask_format=index")
    exported = isinstance(run, ExportedModel)
    checkpoint = run.file if exported else run.checkpoint(str(ckpt))
    target = user_path(out) if out else None
    inputs = resolve_inputs(input, str(split), config["data"], exclude=target or run.run_dir / PREDICTIONS_DIR)
    label = run.name if exported else (str(ckpt) if ckpt in ("best", "last") else Path(str(ckpt)).stem)
    target = target or default_output(run, inputs, label)
    mask_values = None
    if options.mask_format == "values":
        mask_values = run.mask_values if exported else training_mask_values(run, config)
    return PredictionJob(run, config, task, "onnx" if exported else str(ckpt), checkpoint, inputs, OutputFolder(target), options,
                         overrides, mask_values)


def default_output(run: TrainedRun | ExportedModel, inputs: PredictionInputs, label: str) -> Path:
    """``<run>/predictions/<input name>[-<split>]-<label>`` (``label``: best, last, a checkpoint's stem, or
    the exported file's name)."""
    name = inputs.label + (f"-{inputs.split}" if inputs.split != "all" else "") + f"-{label}"
    return run.run_dir / PREDICTIONS_DIR / re.sub(r"[^0-9A-Za-z_.=,-]+", "_", name)


def training_mask_values(run: TrainedRun, config: dict[str, Any]) -> list[int] | None:
    """The ``mask_values`` of the dataset.json the run trained on (run.json's ``dataset.file``), or None
    when it has none (the pixel values are the class indices)."""
    file = (run.record.get("dataset") or {}).get("file")
    project = (config.get("data") or {}).get("project")
    if not file and isinstance(project, str):
        file = str(dataset_file(project))
    try:
        raw = json.loads(Path(str(file)).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError) as err:
        raise AistudioError(f"mask_format=values: the run's dataset.json ({file}) cannot be read "
                            f"({type(err).__name__}), so its mask_values are unknown — use mask_format=index "
                            "(class indices)") from None
    values = raw.get("mask_values") if isinstance(raw, dict) else None
    return [int(v) for v in values] if values else None


def report_failure(image: InputImage, reason: str) -> None:
    """One line per image that could not be read (on stderr, as it happens)."""
    print(f"skipped {image.file}: {reason}", file=sys.stderr, flush=True)


def predict(job: PredictionJob, on_failure: Callable[[InputImage, str], None] | None = report_failure) -> dict[str, Any]:
    """Run the job; returns summary.json's content (also written into ``job.out``). ``on_failure`` is
    called for each image that cannot be read, as it happens."""
    from aistudio.evaluation.loading import load_trained_module
    from aistudio.evaluation.prediction_model import run_predictions
    from aistudio.training.console import tidy_library_output

    started = time.perf_counter()
    tidy_library_output()
    if isinstance(job.run, ExportedModel):
        from aistudio.evaluation.onnx_network import OnnxTaskNetwork, runtime_name

        module, classes = OnnxTaskNetwork(job.checkpoint, job.task), job.run.classes
        runtime = runtime_name()
    else:
        module, classes, _ = load_trained_module(job.config, job.checkpoint)
        runtime = "torch"
    options = job.options
    folder = job.out.open()
    try:
        writers = make_writers(job.task, folder, classes, topk=options.topk, score_threshold=options.score_threshold,
                               save_overlays=options.save_overlays, overlay_threshold=options.overlay_threshold,
                               mask_values=job.mask_values)
        result = run_predictions(job.config, module, job.task, job.inputs.images, writers, job.batch_size, on_failure)
        result["runtime"] = runtime
        outputs: dict[str, Any] = {}
        for writer in writers:
            written = writer.close()
            outputs = {**outputs, **written, "files": outputs.get("files", []) + written.get("files", [])}
        summary = _summary(job, classes, result, outputs, time.perf_counter() - started)
        atomic_write_json(folder / SUMMARY_FILE, summary)
        job.out.commit()
    finally:
        job.out.discard()  # nothing left behind unless committed
    return summary


def _summary(job: PredictionJob, classes: list[str], result: dict[str, Any], outputs: dict[str, Any],
             total_s: float) -> dict[str, Any]:
    seconds = result["seconds"]
    checkpoint = job.checkpoint
    try:
        checkpoint_path = str(checkpoint.relative_to(job.run.run_dir))
    except ValueError:
        checkpoint_path = str(checkpoint)
    return {"run": job.run.name, "run_dir": str(job.run.run_dir), "task": job.task,
            "checkpoint": {"name": job.ckpt, "path": checkpoint_path}, "input": job.inputs.describe(),
            "out": str(job.out.target), "classes": list(classes), "images": len(job.inputs.images),
            "predicted": result["predicted"], "failed": result["failed"],
            "timing": {"predict_s": round(seconds, 3),
                       "images_per_s": round(result["predicted"] / seconds, 2) if seconds > 0 else None,
                       "total_s": round(total_s, 3), "batch_size": result["batch_size"],
                       "num_workers": result["num_workers"], "device": result["device"],
                       "precision": result["precision"], "runtime": result["runtime"]},
            "options": asdict(job.options), "overrides": job.overrides,
            "outputs": {**outputs, "files": [*outputs.get("files", []), SUMMARY_FILE]},
            "created_at": utc_now()}


def format_summary(summary: dict[str, Any]) -> str:
    """What predict.py prints at the end."""
    timing, source = summary["timing"], summary["input"]
    failed = summary["failed"]
    lines = [f"run {summary['run']}  {summary['checkpoint']['path']}  {summary['task']}  "
             f"input {source['path']} ({source['kind']}" + (f", split {source['split']}" if source["split"] != "all"
                                                          else "") + ")",
             f"predicted {summary['predicted']} of {summary['images']} images in {timing['predict_s']:.1f} s "
             f"({timing['images_per_s'] or 0:.1f} images/s, batch {timing['batch_size']}, {timing['device']})"]
    if failed:
        lines.append(f"{len(failed)} could not be read (listed above and in {SUMMARY_FILE}):")
        lines += [f"  {f['file']}: {f['reason']}" for f in failed[:10]]
        if len(failed) > 10:
            lines.append(f"  ... and {len(failed) - 10} more")
    lines.append(f"written: {summary['out']} ({', '.join(summary['outputs']['files'])})")
    return "\n".join(lines)
