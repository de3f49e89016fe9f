"""BatchNorm settings that decide whether a model trained from scratch evaluates sensibly."""

from __future__ import annotations

from typing import Any


def set_bn_momentum(model: Any, momentum: float | None) -> Any:
    """Set every BatchNorm layer's running-statistics momentum (None keeps the builder's).

    torchvision's MobileNetV3 family uses 0.01 (tuned for long ImageNet runs): after the few hundred
    steps of a small dataset the running statistics are still mostly their initial 0/1, and the model
    predicts one class in eval mode while training loss falls. 0.1 (PyTorch's default) fixes that.
    """
    import torch

    if momentum is None:
        return model
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = float(momentum)
    return model
