"""Any torchvision classification model by name, timm-style: ``build_classifier(name, num_classes, ...)``."""

from __future__ import annotations

from typing import Any

from aistudio.models.names import check_name_and_classes, torchvision_models
from aistudio.models.norm import set_bn_momentum
from aistudio.models.surgery import adapt_input_channels, replace_heads
from aistudio.models.weights import is_weights_file, load_weights_file, resolve_torchvision_weights

MODEL_KIND = "classification"


def available_models() -> list[str]:
    return torchvision_models(MODEL_KIND)


def build_classifier(name: str, num_classes: int | None, weights: str | None = None, in_channels: int = 3,
                     bn_momentum: float | None = None, **kwargs: Any) -> Any:
    """Build a torchvision classifier with ``num_classes`` outputs and ``in_channels`` inputs.

    ``weights``: null (random init), a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``, ...,
    from the local hub cache) or a local file. Pretrained heads are replaced by fresh ones;
    extra ``kwargs`` go to the torchvision builder (e.g. ``image_size`` for ViT, ``dropout``).
    ``bn_momentum``: BatchNorm running-statistics momentum (see :func:`aistudio.models.norm.set_bn_momentum`).
    """
    import torchvision.models as models

    num_classes = check_name_and_classes(name, available_models(), "classification", num_classes)
    if weights and not is_weights_file(weights):
        enum = resolve_torchvision_weights(name, str(weights))
        model = models.get_model(name, weights=enum, **kwargs)
        pretrained_classes = len(enum.meta["categories"])
        if pretrained_classes != num_classes:
            replace_heads(model, pretrained_classes, num_classes)
    else:
        model = models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        if weights:
            load_weights_file(model, weights)
    if in_channels != 3:
        adapt_input_channels(model, in_channels)
    return set_bn_momentum(model, bn_momentum)
