"""What a task exports (export.py): the network as a tensors-in, tensors-out module, with the names and
dynamic axes of its inputs and outputs. Each task builds its own (:meth:`TaskModule.export_spec`), so a
new task decides what its deployable graph returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ExportSpec:
    module: torch.nn.Module  # in eval mode; what is traced
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    batched: bool  # True: one (N, C, H, W) tensor per call; False: one (C, H, W) image per call (detectors)
    formats: tuple[str, ...] = ("onnx", "torchscript")
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> what it holds


class SemanticLogits(torch.nn.Module):
    """torchvision segmenters return a dict (``out``, ``aux``); deployment needs the ``out`` logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["out"]


class DetectorOutputs(torch.nn.Module):
    """A torchvision detector on one image, its prediction dict as a tuple of tensors."""

    def __init__(self, model: torch.nn.Module, keys: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        prediction = self.model([image])[0]
        return tuple(prediction[key] for key in self.keys)


def batch_axes(*names: str) -> dict[str, dict[int, str]]:
    return {name: {0: "batch"} for name in names}
