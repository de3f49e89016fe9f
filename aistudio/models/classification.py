"""Any torchvision classification model by name, timm-style: ``build_classifier(name, num_classes, ...)``."""

from __future__ import annotations

from typing import Any

from aistudio import AistudioError
from aistudio.models.names import check_name_and_classes
from aistudio.models.norm import set_bn_momentum
from aistudio.models.weights import is_weights_file, load_weights_file, resolve_torchvision_weights


def available_classifiers() -> list[str]:
    import torchvision.models as models

    return models.list_models(module=models)


# what config checks (aistudio.training.config_checks) validate model.name against, before anything is built
available_models = available_classifiers
MODEL_KIND = "classification"


def build_classifier(name: str, num_classes: int | None, weights: str | None = None, in_channels: int = 3,
                     bn_momentum: float | None = None, **kwargs: Any) -> Any:
    """Build a torchvision classifier with ``num_classes`` outputs and ``in_channels`` inputs.

    ``weights``: null (random init), a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``, ...,
    from the local hub cache) or a local file. Pretrained heads are replaced by fresh ones;
    extra ``kwargs`` go to the torchvision builder (e.g. ``image_size`` for ViT, ``dropout``).
    ``bn_momentum``: BatchNorm running-statistics momentum (see :func:`aistudio.models.norm.set_bn_momentum`).
    """
    import torchvision.models as models

    num_classes = check_name_and_classes(name, available_classifiers(), "classification", num_classes)
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


def _out_size(module: Any) -> int | None:
    import torch.nn as nn

    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
        return module.out_channels
    return None


def head_modules(model: Any, num_classes: int) -> list[str]:
    """Names of the classification head layers: Linear (or 1x1 conv) layers with ``num_classes`` outputs.

    The same rule finds every torchvision head (``fc``, ``classifier.3``, ``heads.head``, aux logits).
    """
    return [name for name, module in model.named_modules() if _out_size(module) == num_classes]


def replace_heads(model: Any, old_classes: int, num_classes: int) -> None:
    """Swap every pretrained head (``old_classes`` outputs) for a freshly initialised one."""
    import torch.nn as nn

    for name in head_modules(model, old_classes):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        if isinstance(old, nn.Linear):
            new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        else:
            new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1, bias=old.bias is not None)
        setattr(parent, child, new)


def adapt_input_channels(model: Any, in_channels: int) -> None:
    """Replace the first convolution for ``in_channels`` inputs; pretrained filters are averaged over RGB."""
    import torch
    import torch.nn as nn

    for name, module in model.named_modules():  # noqa: B007 - the first conv is used below
        if isinstance(module, nn.Conv2d):
            break
    else:
        raise AistudioError("model.in_channels: this model has no convolution to adapt")
    new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                    module.dilation, module.groups, module.bias is not None)
    with torch.no_grad():
        mean = module.weight.mean(dim=1, keepdim=True)
        new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (3.0 / in_channels))
        if module.bias is not None:
            new.bias.copy_(module.bias)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
