"""torchvision semantic segmentation models by name: ``build_segmenter(name, num_classes, ...)``.

torchvision's builders default ``weights_backbone`` to ImageNet weights (a download); here it is
always passed explicitly (null unless asked for), so nothing is fetched at run time.
"""

from __future__ import annotations

from typing import Any

from aistudio import AistudioError
from aistudio.models.classification import adapt_input_channels, replace_heads
from aistudio.models.names import check_name_and_classes
from aistudio.models.norm import set_bn_momentum
from aistudio.models.weights import is_weights_file, load_weights_file, resolve_torchvision_weights


def available_segmenters() -> list[str]:
    import torchvision.models as models

    return models.list_models(module=models.segmentation)


# what config checks (aistudio.training.config_checks) validate model.name against, before anything is built
available_models = available_segmenters
MODEL_KIND = "segmentation"


def build_segmenter(name: str, num_classes: int | None, weights: str | None = None,
                    weights_backbone: str | None = None, in_channels: int = 3, aux_loss: bool | None = None,
                    bn_momentum: float | None = None, **kwargs: Any) -> Any:
    """Build ``name`` with ``num_classes`` output channels; its forward returns ``{"out": ..., "aux": ...}``.

    ``weights``: null, a torchvision name (the whole model, from the local hub cache; heads that do
    not fit ``num_classes`` are re-initialised) or a local file. ``weights_backbone``: null, a
    torchvision name for the backbone (e.g. ``IMAGENET1K_V1``) or a local file for ``model.backbone``.
    ``aux_loss``: add the auxiliary head (deeplabv3/fcn; null = torchvision's default).
    ``bn_momentum``: BatchNorm running-statistics momentum (see :func:`aistudio.models.norm.set_bn_momentum`).
    """
    import torchvision.models as models

    num_classes = check_name_and_classes(name, available_segmenters(), "segmentation", num_classes)
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
            backbone = None if backbone_file or not weights_backbone else _backbone_weights(name, str(weights_backbone))
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


def _backbone_weights(name: str, weights_backbone: str) -> Any:
    """Backbone weights of the model's own family (deeplabv3_resnet50 -> resnet50), from the hub cache."""
    backbone = name.split("_", 1)[1]
    try:
        return resolve_torchvision_weights(backbone, weights_backbone.split(".")[-1])
    except AistudioError as err:  # the shared message speaks of model.weights
        raise AistudioError(str(err).replace("model.weights=", "model.weights_backbone=")) from None
