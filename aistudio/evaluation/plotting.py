"""The pictures of a run: ``plots/`` PNGs written when a run ends and by eval.py, and the same images
plus the HParams entry in the run's TensorBoard events.

What is drawn comes from the run's own records: training curves from metrics.json's entries, the
confusion matrix (classification, semantic) and per-class precision-recall curves (detection) from
the task's test report, and a grid of predictions against the ground truth from the first images of
the evaluated split, drawn by the task (:meth:`TaskModule.example_panels`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from aistudio.tasks.examples import Example

log = logging.getLogger("aistudio.plots")
PLOTS_DIR = "plots"
EXAMPLE_COUNT = 8


def per_class_keys(entries: list[dict[str, Any]], class_names: list[str]) -> list[str]:
    """Metric names that end in a class name (detection's ``val_ap_circle``): not training curves."""
    suffixes = {re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower() for name in class_names}
    return sorted({key for entry in entries for key in entry if key.rsplit("_", 1)[-1] in suffixes})


def collect_examples(module: Any, dataset: Any, collate_fn: Any, data: dict[str, Any],
                     count: int = EXAMPLE_COUNT) -> list[Example]:
    """The task's drawings of its predictions on the first ``count`` images of ``dataset``."""
    import torch
    from torch.utils.data import default_collate

    if len(dataset) == 0:
        return []
    batch = (collate_fn or default_collate)([dataset[i] for i in range(min(count, len(dataset)))])
    module.eval()
    with torch.no_grad():
        batch = module.transfer_batch_to_device(batch, module.device, 0)
        return module.example_panels(batch, data.get("mean"), data.get("std"))


def write_plots(folder: Path, prefix: str, class_names: list[str], entries: list[dict[str, Any]] | None = None,
                report: dict[str, Any] | None = None, examples: list[Example] | None = None,
                split: str = "test") -> dict[str, Path]:
    """Write what there is data for; returns {name: path}. ``prefix`` starts each file name but the
    training curves' (a run has one history; its evaluations have their own names)."""
    from aistudio.plots import figures

    report = report or {}
    written: dict[str, Path] = {}
    if entries:
        path = figures.training_curves(entries, folder / "training_curves.png",
                                       exclude=per_class_keys(entries, class_names))
        if path:
            written["training_curves"] = path
    if report.get("confusion_matrix"):
        written["confusion_matrix"] = figures.confusion_matrix(
            report["confusion_matrix"], class_names, folder / f"{prefix}confusion_matrix.png",
            title=f"confusion matrix ({split})")
    for iou_type, curves in (report.get("pr_curves") or {}).items():
        if curves:
            name = "precision_recall" + ("_masks" if iou_type == "segm" else "")
            written[name] = figures.precision_recall(curves, report["recall_thresholds"], folder / f"{prefix}{name}.png",
                                                     title=f"precision-recall at IoU 0.5 ({split}, {iou_type})")
    if examples:
        written["examples"] = figures.example_grid([e.panel for e in examples], [e.caption for e in examples],
                                                   folder / f"{prefix}examples.png", colors=[e.color for e in examples])
    return written


def log_to_tensorboard(loggers: list[Any], plots: dict[str, Path], step: int, params: dict[str, Any],
                       metrics: dict[str, float], new_scalars: dict[str, float]) -> None:
    """Each plot as an image (tag ``plots/<name>``) and the HParams entry: ``params`` (the run's overrides
    and main settings) against ``metrics``. The HParams tab reads a metric from the scalar of the same
    name: test metrics are scalars already, ``new_scalars`` (the best epoch's value) are added here."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from aistudio.plots.figures import png_array

    for logger in loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        from torch.utils.tensorboard.summary import hparams

        writer = logger.experiment
        for name, path in plots.items():
            writer.add_image(f"plots/{name}", png_array(path), global_step=step, dataformats="HWC")
        for name, value in new_scalars.items():
            writer.add_scalar(name, value, global_step=step)
        for summary in hparams(params, metrics):
            writer._get_file_writer().add_summary(summary)
        # the Trainer closed this writer when the run ended; adding to it opened a new event file with its
        # own writer thread, which nothing else closes (a sweep's process would keep one per job)
        writer.close()


def hparams_of(record: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The run's overrides (``key=value`` as given) and the settings a sweep is usually compared on."""
    params: dict[str, Any] = {"model": (config.get("model") or {}).get("name"),
                              "optimizer.lr": (config.get("optimizer") or {}).get("lr"),
                              "data.batch_size": (config.get("data") or {}).get("batch_size"), "seed": config.get("seed")}
    for override in record.get("overrides") or []:
        key, _, value = override.lstrip("+~").partition("=")
        params[key] = _number_or_text(value)
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}


def _number_or_text(value: str) -> int | float | str:
    """``8`` and ``0.01`` as numbers, so the HParams tab filters and sorts them as numbers."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value
