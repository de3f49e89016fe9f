"""Weights policy shared by every builder: null (random init), a torchvision weights name, or a file.

Nothing may be downloaded at run time: a torchvision weights name must already be in torch's hub
cache, otherwise the builder stops with the file name and where to put it. Detectors' and
segmenters' ``weights_backbone`` names resolve the same way, through :func:`backbone_weights`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path
from typing import Any

from aistudio import AistudioError, user_path

log = logging.getLogger(__name__)


def is_weights_file(weights: str | None) -> bool:
    return bool(weights) and (Path(str(weights)).expanduser().suffix in {".pt", ".pth", ".ckpt", ".bin"}
                              or Path(str(weights)).expanduser().is_file())


def resolve_torchvision_weights(model_name: str, weights: str) -> Any:
    """``DEFAULT``, ``IMAGENET1K_V1`` or ``ResNet18_Weights.IMAGENET1K_V1`` -> a Weights enum, cached locally."""
    import torch
    from torchvision.models import get_model_weights, get_weight

    try:
        enum = get_weight(weights) if "." in weights else get_model_weights(model_name)[weights]
    except (KeyError, ValueError) as err:
        options = [w.name for w in get_model_weights(model_name)] + ["DEFAULT"]
        raise AistudioError(f"model.weights={weights!r} is not a torchvision weights name for {model_name} "
                            f"(valid: {', '.join(options)}; or a local .pth/.ckpt file; or null)") from err
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    if not cached.is_file():
        raise AistudioError(
            f"model.weights={weights!r} for {model_name} needs {Path(enum.url).name}, which is not in "
            f"{cached.parent} and cannot be downloaded here (no internet). Copy the file there, pass a "
            "local file as model.weights=/path/to/weights.pth, or train from scratch with model.weights=null")
    return enum


def backbone_weights(model_name: str, weights_backbone: str) -> Any:
    """A detector's or segmenter's ``weights_backbone`` -> its backbone's Weights enum, cached locally.

    ``DEFAULT`` / ``IMAGENET1K_V1`` name weights of the builder's own backbone family (the default
    of its ``weights_backbone`` argument: ResNet50_Weights for fasterrcnn_resnet50_fpn and
    deeplabv3_resnet50); a full enum name (``ResNet50_Weights.IMAGENET1K_V2``) names its family itself.
    The classification model of that family (resnet50) then resolves it like ``model.weights``.
    """
    import torchvision.models as models

    default = inspect.signature(models.get_model_builder(model_name)).parameters["weights_backbone"].default
    own = None if default is None else type(default).__name__
    if "." in weights_backbone:
        family = weights_backbone.split(".")[0]
        if own is not None and family != own:
            raise AistudioError(f"model.weights_backbone={weights_backbone!r}: {model_name} takes {own} "
                                f"backbone weights, e.g. {own}.{default.name}")
    elif own is None:
        raise AistudioError(f"model.weights_backbone={weights_backbone!r}: {model_name} names no backbone weights "
                            "family; give the full name, e.g. ResNet50_Weights.IMAGENET1K_V2")
    else:
        family = own
    backbone = _classifier_of_weights_family().get(family)
    if backbone is None:
        raise AistudioError(f"model.weights_backbone={weights_backbone!r}: unknown backbone weights family {family}")
    try:
        return resolve_torchvision_weights(backbone, weights_backbone.split(".")[-1])
    except AistudioError as err:  # the shared message speaks of model.weights
        raise AistudioError(str(err).replace("model.weights=", "model.weights_backbone=")) from None


@functools.cache
def _classifier_of_weights_family() -> dict[str, str]:
    """``{"ResNet50_Weights": "resnet50", ...}``: every torchvision classifier by its weights enum class."""
    import torchvision.models as models

    return {models.get_model_weights(name).__name__: name for name in models.list_models(module=models)}


def load_weights_file(model: Any, path: str | Path) -> None:
    """Load a state dict (plain, or an aistudio/Lightning checkpoint) into ``model``.

    Tensors whose shape differs (a new classification head) are skipped and reported, so fine-tuning
    from a model trained on other classes just works.
    """
    import torch

    path = user_path(path)
    if not path.is_file():
        raise AistudioError(f"model.weights={str(path)!r}: file not found — pass an existing .pth/.ckpt file or null")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise AistudioError(f"model.weights={str(path)!r}: no state dict found in the file")
    if any(k.startswith("model.") for k in state):  # saved from our LightningModule
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    load_state_dict_into(model, state, source=str(path))


def load_state_dict_into(model: Any, state: dict[str, Any], source: str) -> None:
    """Load the tensors that fit (name and shape); the rest (e.g. a head for other classes) stay at init."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    missing = sorted(set(own) - set(usable))
    if not usable:
        raise AistudioError(f"model.weights={source!r}: none of its tensors fit this model — wrong architecture?")
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d tensors from %s (%d skipped: shape/name mismatch, %d left at init)",
             len(usable), source, len(skipped), len(missing))
