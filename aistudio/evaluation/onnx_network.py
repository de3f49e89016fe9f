"""An exported ONNX file run by onnxruntime in the place of a task module: ``predict_step`` gives what the
task's own ``predict_step`` gives (class probabilities, per-pixel probabilities, detections with boolean
masks), so predict.py's loader, writers and summary are the same for a run and for its export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aistudio import AistudioError

MASK_THRESHOLD = 0.5  # the detection tasks' default (export records say the same)


def onnx_session(file: Path, purpose: str = "running an .onnx file") -> Any:
    """An onnxruntime session on the CPU provider; a missing onnxruntime is one error with the fix."""
    try:
        import onnxruntime
    except ImportError:
        raise AistudioError(f"{purpose} needs onnxruntime: pip install -e '.[export]'") from None
    return onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])


def runtime_name() -> str:
    from importlib import metadata

    return f"onnxruntime {metadata.version('onnxruntime')} CPUExecutionProvider"


class OnnxTaskNetwork:
    """``predict_step(images, batch_idx)`` of a task module, computed by onnxruntime."""

    def __init__(self, file: Path, task: str):
        self.session = onnx_session(file, "predict.py on an .onnx file")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.task = task

    def _run(self, array: torch.Tensor) -> list[Any]:
        return self.session.run(None, {self.input_name: array.detach().cpu().float().contiguous().numpy()})

    def predict_step(self, images: Any, batch_idx: int) -> Any:
        if self.task in ("classification", "semantic_segmentation"):
            return torch.from_numpy(self._run(images)[0]).softmax(dim=1)
        predictions = []
        for image in images:  # detectors: one (C, H, W) image per call
            outputs = dict(zip(self.output_names, (torch.from_numpy(o) for o in self._run(image))))
            if "masks" in outputs:  # (D, 1, H, W) probabilities -> (D, H, W) booleans, as evaluation does
                outputs["masks"] = outputs["masks"].squeeze(1) > MASK_THRESHOLD
            predictions.append(outputs)
        return predictions
