"""A run's task module with a checkpoint's weights, built through training's build path.

The module is built from the run's config with the class names and train-split class counts the
checkpoint recorded (so the same loss and head are rebuilt even when the data is overridden), then the
checkpoint's weights are loaded. Shared by evaluation, export and prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aistudio import AistudioError
from aistudio.data.project import Project


def load_trained_module(config: dict[str, Any], checkpoint: Path,
                        project: Project | None = None) -> tuple[Any, list[str], dict[str, Any]]:
    """(module in eval mode, the class names it was trained on, checkpoint facts: epoch, global_step).
    With ``project`` (evaluation, export), the project must have those classes in the same order;
    without one (prediction on new images) the checkpoint alone is enough."""
    import torch

    from aistudio.training.fit import build_module

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hparams = state.get("hyper_parameters") or {}
    classes = list(hparams.get("class_names") or (state.get("aistudio") or {}).get("class_names")
                   or (project.classes if project else []))
    if not classes:
        raise AistudioError(f"{checkpoint} records no class names — it is not a checkpoint of an aistudio run")
    if project is not None and list(project.classes) != classes:
        raise AistudioError(f"{project.source} has classes {project.classes}, but the checkpoint was trained on "
                            f"{classes} — use a dataset with the same classes in the same order")
    if "class_counts" in hparams:  # the loss is rebuilt as it trained (class weights)
        counts = hparams["class_counts"]
    else:  # a checkpoint from before counts were recorded
        counts = project.class_counts("train") if project else [1] * len(classes)
    module = build_module(config, classes, counts)
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as err:  # a model.* override that changes the architecture
        raise AistudioError(f"{checkpoint} does not fit the model built from the run's config.json with these "
                            f"overrides — drop the model.* overrides that change its layers "
                            f"({str(err).splitlines()[0]})") from None
    return module.eval(), classes, {"epoch": state.get("epoch"), "global_step": state.get("global_step")}
