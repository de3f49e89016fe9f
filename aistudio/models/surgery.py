"""Adapt a built torchvision model's head and stem: new class count, other input channels.

Shared by the classification and segmentation builders (and the classification task's
backbone/head split, which uses :func:`head_modules`).
"""

from __future__ import annotations

from typing import Any

from aistudio import AistudioError


def _out_size(module: Any) -> int | None:
    import torch.nn as nn

    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
        return module.out_channels
    return None


def head_modules(model: Any, num_classes: int) -> list[str]:
    """Names of the classification head layers: Linear (or 1x1 conv) layers with ``num_classes`` outputs.

    The same rule finds every torchvision head (``fc``, ``classifier.3``, ``heads.head``, aux logits,
    a segmenter's per-pixel classifier convs). A timm model names its head itself
    (``pretrained_cfg["classifier"]``: ``fc``, ``head.fc``, ``classifier``, ``("head", "head_dist")``);
    that is used when it matches. Layers inside squeeze-excitation blocks never count, though their 1x1
    convs can have ``num_classes`` channels (efficientnet_b0 with 10 classes, mobilenet_v3_small with 8).
    """
    modules = dict(model.named_modules())
    # a squeeze-excitation block's 1x1 convs are gates inside the backbone, whatever their width
    gates = [name for name, module in modules.items() if "SqueezeExcitation" in type(module).__name__]
    matching = [name for name, module in modules.items() if _out_size(module) == num_classes
                and not any(name.startswith(f"{gate}.") for gate in gates)]
    config = getattr(model, "pretrained_cfg", None)
    named = config.get("classifier") if isinstance(config, dict) else None
    named = [named] if isinstance(named, str) else list(named or [])
    return [name for name in matching if name in named] or matching


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
