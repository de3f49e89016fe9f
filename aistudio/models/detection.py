"""torchvision detectors (and Mask R-CNN) by name, with the background class and the weights policy.

torchvision counts the background as class 0, so a dataset with K classes builds a K+1-way head;
labels in targets are 1..K. Builders default ``weights_backbone`` to ImageNet weights (a download):
here it is always passed explicitly (null unless asked for), so nothing is fetched at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aistudio import AistudioError
from aistudio.models.names import check_name_and_classes, torchvision_models
from aistudio.models.weights import (
    backbone_weights,
    is_weights_file,
    load_state_dict_into,
    load_weights_file,
    resolve_torchvision_weights,
)

MODEL_KIND = "detection"


def available_models() -> list[str]:
    return torchvision_models(MODEL_KIND)


def set_rpn_anchors(model: Any, name: str, sizes: Sequence[Any], aspect_ratios: Sequence[float]) -> None:
    """Give a two-stage detector's RPN anchors matched to the data (one size list per feature map).

    The builders hard-code COCO anchors (32-512 px); on small images most of them match nothing.
    The RPN head is rebuilt when the anchor count per location changes.
    """
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.rpn import RPNHead

    rpn = getattr(model, "rpn", None)
    if rpn is None:
        raise AistudioError(f"model.anchor_sizes: {name} has no region proposal network (only Faster/Mask "
                            "R-CNN models take it) — remove model.anchor_sizes")
    levels = len(rpn.anchor_generator.sizes)
    per_level = [tuple(int(s) for s in level) for level in sizes] if isinstance(sizes[0], (list, tuple)) \
        else [tuple(int(s) for s in sizes)] * levels
    if len(per_level) != levels:
        raise AistudioError(f"model.anchor_sizes has {len(per_level)} lists but {name} has {levels} feature "
                            "maps — give one list per feature map, or one flat list for all of them")
    generator = AnchorGenerator(tuple(per_level), (tuple(float(a) for a in aspect_ratios),) * levels)
    anchors = generator.num_anchors_per_location()[0]
    if anchors != rpn.anchor_generator.num_anchors_per_location()[0]:
        rpn.head = RPNHead(model.backbone.out_channels, anchors, conv_depth=len(rpn.head.conv))
    rpn.anchor_generator = generator


def build_detector(name: str, num_classes: int | None, weights: str | None = None,
                   weights_backbone: str | None = None, in_channels: int = 3, min_size: int | None = None,
                   max_size: int | None = None, anchor_sizes: Sequence[Any] | None = None,
                   aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), **kwargs: Any) -> Any:
    """Build ``name`` with ``num_classes`` object classes (+ background).

    ``weights``: null, a torchvision name (COCO weights from the local hub cache; heads that do not fit
    the class count are re-initialised) or a local file. ``weights_backbone``: null, ``DEFAULT`` /
    ``IMAGENET1K_V1`` of the builder's own backbone family, or a full name such as
    ``ResNet50_Weights.IMAGENET1K_V2`` (see :func:`aistudio.models.weights.backbone_weights`).
    ``min_size``/``max_size``: the model's internal resize (torchvision's 800/1333 default makes
    small images 5-10x slower). ``anchor_sizes`` (pixels
    after that resize) replaces the RPN anchors of Faster/Mask R-CNN; other keyword arguments go to
    the torchvision builder (e.g. ``box_batch_size_per_image``, ``rpn_post_nms_top_n_train``).
    """
    import torchvision.models as models

    num_classes = check_name_and_classes(name, available_models(), "detection", num_classes)
    if in_channels != 3:
        raise AistudioError("detection models take RGB input: set data.channels=3")
    if min_size is not None:
        kwargs["min_size"] = int(min_size)
    if max_size is not None:
        kwargs["max_size"] = int(max_size)
    backbone = backbone_weights(name, str(weights_backbone)) if weights_backbone else None
    model = models.get_model(name, weights=None, weights_backbone=backbone, num_classes=num_classes + 1,
                             **kwargs)
    if anchor_sizes:
        set_rpn_anchors(model, name, anchor_sizes, aspect_ratios)
    if weights and not is_weights_file(weights):
        enum = resolve_torchvision_weights(name, str(weights))
        load_state_dict_into(model, enum.get_state_dict(progress=False), source=f"{name} {weights}")
    elif weights:
        load_weights_file(model, weights)
    return model
