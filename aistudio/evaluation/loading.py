"""A run's task module with a checkpoint's weights, built through training's build path.

The module is built from the run's config with the class names and train-split class counts the
checkpoint recorded (so the same loss and head are rebuilt even when the data is overridden), then the
checkpoint's weights are loaded. Shared by evaluation and export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aistudio import AistudioError
from aistudio.data.project import Project


def load_trained_module(config: dict[str, Any], project: Project, checkpoint: Path) -> tuple[Any, dict[str, Any]]:
    """(module in eval mode, checkpoint facts: epoch, global_step). The project must have the classes the
    checkpoint was trained on, in the same order."""
    import torch

    from aistudio.training.fit import build_module

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hparams = state.get("hyper_parameters") or {}
    classes = list(hparams.get("class_names") or project.classes)
    if list(project.classes) != classes:
        raise AistudioError(f"{project.source} has classes {project.classes}, but the checkpoint was trained on "
                            f"{classes} — use a dataset with the same classes in the same order")
    counts = hparams["class_counts"] if "class_counts" in hparams else project.class_counts("train")
    module = build_module(config, classes, counts)
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as err:  # a model.* override that changes the architecture
        raise AistudioError(f"{checkpoint} does not fit the model built from the run's config.json with these "
                            f"overrides — drop the model.* overrides that change its layers "
                            f"({str(err).splitlines()[0]})") from None
    return module.eval(), {"epoch": state.get("epoch"), "global_step": state.get("global_step")}
