"""Export a trained run's network (ONNX or TorchScript) and prove the file computes what PyTorch does.

The network comes from the task (:meth:`TaskModule.export_spec`): classifiers and segmenters take a
(N, C, H, W) batch with a dynamic batch axis; detectors take one (C, H, W) image of any size. The
export is run on real validation images (the run's eval transforms) and compared with PyTorch: ONNX
through onnxruntime's CPU provider, TorchScript by reloading the saved file. The check, the opset and
the input spec (with the preprocessing a deployment must repeat) are written beside the file as
``export/<file>.json`` (``resnet18-best.onnx.json``); a failed check keeps both files and exits non-zero.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``): torchvision's detectors export through
it, and one exporter for every task keeps the files comparable. TorchScript itself is deprecated by
PyTorch (2.9+) in favour of ``torch.export``; it is offered because C++/mobile deployments still load it.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from aistudio import AistudioError
from aistudio.data.project import Project
from aistudio.evaluation.exported_model import export_record_path
from aistudio.evaluation.trained_run import TrainedRun, apply_overrides, project_of
from aistudio.runs.atomic import atomic_write_json
from aistudio.runs.record import package_versions, utc_now

log = logging.getLogger("aistudio.export")
EXPORT_DIR = "export"
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
ATOL, RTOL = 1e-4, 1e-3  # |export - pytorch| <= ATOL + RTOL * |pytorch|, element-wise (float32 CPU kernels)
DETECTION_ATOL = 1e-2  # box corners in pixels and scores: NMS and RoIAlign kernels differ in the last bits


def export_run(run: TrainedRun, fmt: str, ckpt: str = "best", overrides: list[str] | None = None,
               opset: int = 17, check_images: int = 8, out: str | Path | None = None) -> dict[str, Any]:
    """Export ``run``'s ``ckpt`` as ``fmt``, check it, write ``<name>.<suffix>`` and ``<name>.<suffix>.json``."""
    if fmt not in SUFFIXES:
        raise AistudioError(f"format={fmt}: use one of {', '.join(SUFFIXES)}")
    overrides = list(overrides or [])
    config = apply_overrides(run.config, overrides)
    project = project_of(config["data"], "nothing was exported")
    checkpoint = run.checkpoint(ckpt)
    from aistudio.evaluation.loading import load_trained_module
    from aistudio.training.console import tidy_library_output

    module, _, saved = load_trained_module(config, checkpoint, project)
    spec = module.export_spec()
    if fmt not in spec.formats:
        raise AistudioError(f"format={fmt} is not available for {config['task']['name']} "
                            f"({config['model'].get('name')}): use format={spec.formats[0]}")
    tidy_library_output()
    images = _check_images(config, project, check_images, spec.batched)
    folder = Path(out) if out else run.run_dir / EXPORT_DIR
    label = ckpt if ckpt in ("best", "last") else Path(ckpt).stem
    target = folder / f"{config['model'].get('name') or 'model'}-{label}{SUFFIXES[fmt]}"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    (_export_onnx if fmt == "onnx" else _export_torchscript)(spec, images, target, opset)
    check = _check(spec, images, target, fmt)
    record = {"run": run.name, "run_dir": str(run.run_dir), "format": fmt, "file": target.name,
              "checkpoint": {"name": ckpt, "path": str(checkpoint), **saved},
              "task": config["task"]["name"], "model": config["model"].get("name"), "classes": list(project.classes),
              "mask_values": project.mask_values, "opset": opset if fmt == "onnx" else None,
              "exporter": "torch.onnx.export(dynamo=False)" if fmt == "onnx" else "torch.jit.trace",
              "input": _input_spec(spec, config, images), "outputs": spec.outputs, "check": check,
              "overrides": overrides, "versions": _versions(fmt), "created_at": utc_now(),
              "duration_s": round(time.perf_counter() - started, 3)}
    atomic_write_json(export_record_path(target), record)
    return record


def _check_images(config: dict[str, Any], project: Project, count: int, batched: bool) -> list[Any]:
    """Up to ``count`` images as the model sees them (eval transforms): validation images first, then test
    and train ones when the validation split is smaller. A batched export needs 3 (a batch of 2 is
    traced, a batch of another size checked)."""
    from aistudio.training.fit import build_datamodule

    datamodule = build_datamodule(config, project)
    needed = 3 if batched else 1
    picked: list[Any] = []
    for split in ("val", "test", "train"):
        if len(picked) >= max(count, needed) or not project.split(split):
            continue
        dataset = datamodule.eval_dataset(split)
        picked += [dataset[i][0] for i in range(min(max(count, needed) - len(picked), len(dataset)))]
    if len(picked) < needed:
        raise AistudioError(f"{project.source} has {len(picked)} image(s); the export check needs {needed}")
    return picked


def _export_onnx(spec: Any, images: list[Any], target: Path, opset: int) -> None:
    import torch

    example = (torch.stack(images[:2]),) if spec.batched else (images[0],)
    with torch.no_grad():
        torch.onnx.export(spec.module, example, str(target), dynamo=False, opset_version=opset,
                          input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_axes=spec.dynamic_axes)


def _export_torchscript(spec: Any, images: list[Any], target: Path, opset: int) -> None:
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        traced = torch.jit.trace(spec.module, torch.stack(images[:2]), strict=False)
    traced.save(str(target))


def _check(spec: Any, images: list[Any], target: Path, fmt: str) -> dict[str, Any]:
    """Run the exported file and PyTorch on the same images; batched exports get all images in one
    batch (a size the trace did not see), detectors one image at a time."""
    import torch

    run_export = _onnx_runner(target) if fmt == "onnx" else _torchscript_runner(target)
    inputs = [torch.stack(images)] if spec.batched else images
    differences, worst, counts_match = [], 0.0, True
    with torch.no_grad():
        for x in inputs:
            expected = spec.module(x)
            expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
            actual = run_export(x)
            if any(a.shape != e.shape for a, e in zip(actual, expected)):
                counts_match = False
                continue
            for a, e in zip(actual, expected):
                if e.size:
                    worst = max(worst, float(np.abs(a.astype(np.float64) - e).max()))
                    atol = ATOL if spec.batched else DETECTION_ATOL
                    differences.append(bool(np.all(np.abs(a - e) <= atol + RTOL * np.abs(e))))
    from aistudio.evaluation.onnx_network import runtime_name

    runtime = runtime_name() if fmt == "onnx" else "torch.jit.load in this process"
    return {"images": len(images), "batch": len(images) if spec.batched else 1, "runtime": runtime,
            "max_abs_diff": worst, "atol": ATOL if spec.batched else DETECTION_ATOL, "rtol": RTOL,
            "same_output_shapes": counts_match, "passed": counts_match and all(differences)}


def _onnx_runner(target: Path) -> Any:
    from aistudio.evaluation.onnx_network import onnx_session

    session = onnx_session(target, "the ONNX check")
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})


def _torchscript_runner(target: Path) -> Any:
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        loaded = torch.jit.load(str(target), map_location="cpu")

    def run(x: Any) -> list[Any]:
        result = loaded(x)
        return [t.numpy() for t in (result if isinstance(result, tuple) else (result,))]

    return run


def _input_spec(spec: Any, config: dict[str, Any], images: list[Any]) -> dict[str, Any]:
    """What a deployment feeds the file, and how to make it from an image file."""
    data = config["data"]
    channels, height, width = (int(v) for v in images[0].shape)
    shape: list[Any] = ["batch", channels, height, width] if spec.batched else [channels, "height", "width"]
    return {"name": spec.input_names[0], "shape": shape, "dtype": "float32",
            "layout": "NCHW" if spec.batched else "CHW",
            "preprocessing": {"channels": data.get("channels"), "image_size": data.get("image_size"),
                              "mean": data.get("mean"), "std": data.get("std"),
                              "eval_transform": data.get("eval_transform")}}


def _versions(fmt: str) -> dict[str, str | None]:
    return package_versions(["torch", "torchvision"] + (["onnx", "onnxruntime"] if fmt == "onnx" else []))
