"""``weights_backbone`` of detectors and segmenters: one resolution, never a download."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import get_model_weights, get_weight

from aistudio import AistudioError
from aistudio.models.detection import build_detector
from aistudio.models.segmentation import build_segmenter
from aistudio.models.weights import backbone_weights


def _hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    return cache


def _cache_name(enum) -> str:
    return enum.url.rsplit("/", 1)[1]


@pytest.mark.parametrize("detector, segmenter, backbone", [
    ("fasterrcnn_mobilenet_v3_large_320_fpn", "lraspp_mobilenet_v3_large", "mobilenet_v3_large"),
    ("fasterrcnn_resnet50_fpn", "deeplabv3_resnet50", "resnet50"),
])
def test_a_detector_and_a_segmenter_of_one_family_get_the_same_backbone_weights(tmp_path, monkeypatch, detector,
                                                                                 segmenter, backbone):
    cache = _hub_cache(tmp_path, monkeypatch)
    family = get_model_weights(backbone)
    for enum in family:  # resolving only checks that the file is cached; nothing reads it here
        (cache / _cache_name(enum)).touch()
    for short in ("DEFAULT", "IMAGENET1K_V1"):
        expected = family[short]
        assert backbone_weights(detector, short) is expected
        assert backbone_weights(segmenter, short) is expected
    full = f"{family.__name__}.IMAGENET1K_V2"
    assert backbone_weights(detector, full) is backbone_weights(segmenter, full) is get_weight(full)


def test_a_full_enum_name_gives_a_family_to_builders_without_one(tmp_path, monkeypatch):
    cache = _hub_cache(tmp_path, monkeypatch)
    enum = get_weight("ResNet50_Weights.IMAGENET1K_V2")
    (cache / _cache_name(enum)).touch()
    assert backbone_weights("fasterrcnn_resnet50_fpn_v2", "ResNet50_Weights.IMAGENET1K_V2") is enum
    with pytest.raises(AistudioError, match="fasterrcnn_resnet50_fpn_v2 names no backbone weights family; "
                                            "give the full name"):
        backbone_weights("fasterrcnn_resnet50_fpn_v2", "DEFAULT")
    vgg = get_weight("VGG16_Weights.IMAGENET1K_FEATURES")
    (cache / _cache_name(vgg)).touch()
    assert backbone_weights("ssd300_vgg16", "IMAGENET1K_FEATURES") is vgg


def test_bad_backbone_weights_names_are_clear(tmp_path, monkeypatch):
    _hub_cache(tmp_path, monkeypatch)
    with pytest.raises(AistudioError, match="unknown backbone weights family Nope_Weights"):
        backbone_weights("fasterrcnn_resnet50_fpn_v2", "Nope_Weights.IMAGENET1K_V1")
    for name in ("fasterrcnn_resnet50_fpn", "deeplabv3_resnet50"):
        with pytest.raises(AistudioError, match="model.weights_backbone='NOPE' is not a torchvision weights "
                                                "name for resnet50"):
            backbone_weights(name, "ResNet50_Weights.NOPE")
        with pytest.raises(AistudioError, match=f"{name} takes ResNet50_Weights backbone weights"):
            backbone_weights(name, "ResNet101_Weights.IMAGENET1K_V1")
        with pytest.raises(AistudioError, match=r"model.weights_backbone='DEFAULT' for resnet50 needs "
                                                r"resnet50-.*\.pth.*cannot be downloaded here"):
            backbone_weights(name, "DEFAULT")


def test_cached_backbone_weights_load_into_a_detector_and_a_segmenter(tmp_path, monkeypatch):
    from torchvision.models import mobilenet_v3_large

    cache = _hub_cache(tmp_path, monkeypatch)
    reference = mobilenet_v3_large()  # stands in for the ImageNet file: same layout
    torch.save(reference.state_dict(), cache / _cache_name(get_weight("MobileNet_V3_Large_Weights.IMAGENET1K_V1")))
    first_conv = reference.features[0][0].weight
    detector = build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", 3, weights_backbone="IMAGENET1K_V1")
    segmenter = build_segmenter("lraspp_mobilenet_v3_large", 3, weights_backbone="IMAGENET1K_V1")
    assert torch.equal(detector.backbone.body["0"][0].weight, first_conv)
    assert torch.equal(segmenter.backbone["0"][0].weight, first_conv)
