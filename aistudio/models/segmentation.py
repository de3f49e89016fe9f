"""torchvision semantic segmentation models by name: ``build_segmenter(name, num_classes, ...)``.

torchvision's builders default ``weights_backbone`` to ImageNet weights (a download); here it is
always passed explicitly (null unless asked for), so nothing is fetched at run time.
"""

from __future__ import annotations

from typing import Any

from aistudio import AistudioError
from aistudio.models.names import check_name_and_classes, torchvision_models
from aistudio.models.norm import set_bn_momentum
from aistudio.models.surgery import adapt_input_channels, replace_heads
from aistudio.models.weights import (
    backbone_weights,
    is_weights_file,
    load_weights_file,
    resolve_torchvision_weights,
)

MODEL_KIND = "segmentation"


def available_models() -> list[str]:
    return torchvision_models(MODEL_KIND)


def build_segmenter(name: str, num_classes: int | None, weights: str | None = None,
                    weights_backbone: str | None = None, in_channels: int = 3, aux_loss: bool | None = None,
                    bn_momentum: float | None = None, **kwargs: Any) -> Any:
    """Build ``name`` with ``num_classes`` output channels; its forward returns ``{"out": ..., "aux": ...}``.

    ``weights``: null, a torchvision name (the whole model, from the local hub cache; heads that do
    not fit ``num_classes`` are re-initialised) or a local file. ``weights_backbone``: null, a
    torchvision name for the backbone (``IMAGENET1K_V1`` of the builder's own backbone family, or a
    full name such as ``ResNet50_Weights.IMAGENET1K_V2``; see :func:`aistudio.models.weights.backbone_weights`)
    or a local file for ``model.backbone``.
    ``aux_loss``: add the auxiliary head (deeplabv3/fcn; null = torchvision's default).
    ``bn_momentum``: BatchNorm running-statistics momentum (see :func:`aistudio.models.norm.set_bn_momentum`).
    """
    import torchvision.models as models

    num_classes = check_name_and_classes(name, available_models(), "segmentation", num_classes)
    if aux_loss is not None:
        kwargs["aux_loss"] = bool(aux_loss)
    pretrained = bool(weights) and not is_weights_file(weights)
    backbone_file = bool(weights_backbone) and is_weights_file(weights_backbone)
    try:
        if pretrained:
            enum = resolve_torchvision_weights(name, str(weights))
            kwargs.pop("aux_loss", None)  # torchvision insists on the pretrained layout; trimmed below
            model = models.get_model(name, weights=enum, weights_backbone=None, **kwargs)
            replace_heads(model, len(enum.meta["categories"]), num_classes)
            if aux_loss is False and hasattr(model, "aux_classifier"):
                model.aux_classifier = None
        else:
            backbone = None if backbone_file or not weights_backbone else backbone_weights(name, str(weights_backbone))
            model = models.get_model(name, weights=None, weights_backbone=backbone, num_classes=num_classes, **kwargs)
    except NotImplementedError as err:  # lraspp: "This model does not use auxiliary loss"
        raise AistudioError(f"model.aux_loss=true: {name} has no auxiliary head ({err}) — set model.aux_loss=null") from err
    if weights and not pretrained:
        load_weights_file(model, weights)
    elif backbone_file and not pretrained:
        load_weights_file(model.backbone, weights_backbone)
    if in_channels != 3:
        adapt_input_channels(model, in_channels)
    return set_bn_momentum(model, bn_momentum)
