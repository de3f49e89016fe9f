"""An exported ``.onnx`` file opened for prediction without its run: ``predict.py run=<file.onnx>``.

What a deployment needs besides the graph is in the ``<file>.json`` export.py wrote beside it: the task,
the class names, the dataset's mask values and the preprocessing (channels, the eval transform). From
those this module makes the small config predict.py runs on (the same keys a run's config.json has), so
the inputs, the DataLoader and the writers are the ones a run uses. Checked before torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aistudio import AistudioError, user_path
from aistudio.run_layout import RUN_FILE
from aistudio.runs.atomic import read_json

EXPORT_SUFFIX = ".onnx"  # what predict.py runs from a file (TorchScript files: predict with their run)
CPU_HARDWARE = {"_target_": "aistudio.training.hardware.resolve_hardware", "selected_devices": "cpu",
                "precision": "32-true"}  # onnxruntime's CPU provider: the Trainer only drives the loop
DEFAULT_BATCH_SIZE = 32  # exports record no batch size; classifiers and segmenters take any


def export_record_path(file: Path) -> Path:
    """``resnet18-best.onnx`` -> ``resnet18-best.onnx.json``: one record per exported file (an ONNX and a
    TorchScript export of the same checkpoint each keep theirs)."""
    return file.with_name(file.name + ".json")


def is_exported_file(reference: str) -> bool:
    """``run=`` names an exported file (by its suffix) rather than a run."""
    return str(reference).lower().endswith(EXPORT_SUFFIX)


@dataclass
class ExportedModel:
    """An ONNX file and its export record."""

    file: Path
    record: dict[str, Any]

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def task(self) -> str:
        return str(self.record["task"])

    @property
    def classes(self) -> list[str]:
        return [str(name) for name in self.record["classes"]]

    @property
    def mask_values(self) -> list[int] | None:
        values = self.record.get("mask_values")
        return [int(v) for v in values] if values else None

    @property
    def batched(self) -> bool:
        """Classifiers and segmenters take (N, C, H, W); detectors one (C, H, W) image per call."""
        return self.record["input"].get("layout") == "NCHW"

    @property
    def run_dir(self) -> Path:
        """Where predictions go by default: the run the file was exported from when it still sits in that
        run's ``export/`` folder, else the file's own folder."""
        parent = self.file.parent
        return parent.parent if (parent.parent / RUN_FILE).is_file() and parent.name == "export" else parent

    @property
    def config(self) -> dict[str, Any]:
        """A run-shaped config for prediction: the task, the recorded preprocessing, CPU, the default
        workers and progress bar. Overrides (``data.num_workers=0``...) apply to it as to a run's."""
        preprocessing = self.record["input"].get("preprocessing") or {}
        data = {"task": self.task, "channels": preprocessing.get("channels") or 3,
                "image_size": preprocessing.get("image_size"), "eval_transform": preprocessing.get("eval_transform"),
                "eval_batch_size": DEFAULT_BATCH_SIZE if self.batched else 1, "num_workers": "auto",
                "pin_memory": False, "split_index": 0}
        return {"task": {"name": self.task}, "model": {"name": self.record.get("model")}, "data": data,
                "hardware": dict(CPU_HARDWARE),
                "callbacks": {"progress_bar": {"_target_": "aistudio.training.callbacks.progress_bar",
                                               "kind": "auto", "interval_s": 30}}}


def open_exported(reference: str, ckpt: str = "best") -> ExportedModel:
    """The ``.onnx`` file ``reference`` names, with its export record; every way it cannot be used is one
    error naming the file and the fix."""
    file = user_path(str(reference))
    if not file.is_file():
        raise AistudioError(f"run={reference}: no such file ({file}) — pass an .onnx file export.py wrote, or a run")
    if ckpt != "best":
        raise AistudioError(f"ckpt={ckpt}: an exported file holds one set of weights already — leave ckpt out, or "
                            "predict with the run (run=<id> ckpt=...)")
    sidecar = export_record_path(file)
    record = read_json(sidecar, default=None)
    if not isinstance(record, dict) or not {"task", "classes", "input"} <= set(record):
        raise AistudioError(f"run={reference}: {sidecar.name} is missing or is not an export record, so the task, "
                            f"classes and preprocessing are unknown — export with python export.py run=<run> "
                            "format=onnx (it writes both files), or predict with the run itself")
    if record.get("format") != "onnx":
        raise AistudioError(f"{sidecar} records format {record.get('format')!r}, not onnx — export again with "
                            "format=onnx")
    check = record.get("check") or {}
    if not check.get("passed"):
        raise AistudioError(f"{file.name} failed its export check (max difference {check.get('max_abs_diff')} from "
                            f"PyTorch, see {sidecar.name}) — its predictions would not be the run's: export "
                            "again, or predict with the run itself")
    return ExportedModel(file.resolve(), record)
