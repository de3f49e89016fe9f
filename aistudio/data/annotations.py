"""Object annotations in dataset.json (detection, instance segmentation): parsing and checks.

Per image, ``objects`` is a list of ``{"class": name, "bbox": [x, y, w, h], "segmentation": ...,
"iscrowd": 0}`` with COCO conventions: ``bbox`` in pixels from the top-left corner; ``segmentation``
either polygons (``[[x1, y1, x2, y2, ...], ...]``) or RLE (``{"size": [h, w], "counts": ...}``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

# a box may overshoot the image by this many pixels (rounding in many annotation tools): it is clipped
CLIP_TOLERANCE_PX = 1.0


@dataclass(frozen=True)
class ObjectRecord:
    category: int
    bbox: tuple[float, float, float, float]  # x, y, w, h (pixels)
    segmentation: Any = None
    iscrowd: bool = False


def _number_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _segmentation_problem(segmentation: Any) -> str | None:
    if isinstance(segmentation, list):
        if not segmentation or not all(_number_list(p) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation):
            return "'segmentation' polygons must be lists of at least 3 x,y pairs"
        return None
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (_number_list(size) and len(size) == 2) or not isinstance(counts, (str, list)):
            return "'segmentation' RLE must have 'size': [height, width] and 'counts'"
        return None
    return "'segmentation' must be polygons (a list of lists) or RLE ({'size', 'counts'})"


def parse_objects(where: str, raw: Any, classes: list[str], need_segmentation: bool,
                  fail: Callable[[str], None]) -> list[ObjectRecord] | None:
    """Structure and class checks; geometry against the image size comes later (:func:`fit_to_image`)."""
    if not isinstance(raw, list):
        fail(f"{where}: 'objects' must be a list (empty for an image without objects)")
        return None
    objects: list[ObjectRecord] = []
    ok = True
    for k, obj in enumerate(raw):
        at = f"{where} objects[{k}]"
        if not isinstance(obj, dict):
            fail(f"{at}: must be an object with 'class' and 'bbox'")
            ok = False
            continue
        name = obj.get("class")
        if isinstance(name, int) and not isinstance(name, bool) and 0 <= name < len(classes):
            category = name
        elif str(name) in classes:
            category = classes.index(str(name))
        else:
            fail(f"{at}: class {name!r} is not one of the {len(classes)} classes — fix it or add it to 'classes'")
            ok = False
            continue
        bbox = obj.get("bbox")
        if not (_number_list(bbox) and len(bbox) == 4):
            fail(f"{at}: 'bbox' must be [x, y, width, height] in pixels, got {bbox!r}")
            ok = False
            continue
        segmentation = obj.get("segmentation")
        if segmentation is None and need_segmentation:
            fail(f"{at}: 'segmentation' (polygons or RLE) is missing — instance segmentation needs a mask per object")
            ok = False
            continue
        if segmentation is not None and (problem := _segmentation_problem(segmentation)):
            fail(f"{at}: {problem}")
            ok = False
            continue
        objects.append(ObjectRecord(category, tuple(float(v) for v in bbox), segmentation,  # type: ignore[arg-type]
                                    bool(obj.get("iscrowd", 0))))
    return objects if ok else None


def fit_to_image(where: str, objects: list[ObjectRecord], width: int, height: int,
                 fail: Callable[[str], None], warn: Callable[[str], None]) -> list[ObjectRecord]:
    """Drop degenerate boxes (reported), clip sub-pixel overshoot, report boxes outside the image."""
    kept = []
    for k, obj in enumerate(objects):
        x, y, w, h = obj.bbox
        at = f"{where} objects[{k}]"
        if w <= 0 or h <= 0:
            warn(f"{at}: degenerate box {list(obj.bbox)} (width or height <= 0) dropped")
            continue
        t = CLIP_TOLERANCE_PX
        if x < -t or y < -t or x + w > width + t or y + h > height + t:
            fail(f"{at}: box {list(obj.bbox)} extends outside the {width}x{height} image — fix the box "
                 "(COCO [x, y, width, height] in pixels) or the image's width/height")
            continue
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(width), x + w), min(float(height), y + h)
        if obj.segmentation is not None and isinstance(obj.segmentation, dict):
            rle_h, rle_w = obj.segmentation["size"]
            if (int(rle_h), int(rle_w)) != (height, width):
                fail(f"{at}: RLE size {obj.segmentation['size']} differs from the image's [{height}, {width}]")
                continue
        kept.append(replace(obj, bbox=(x0, y0, x1 - x0, y1 - y0)) if (x0, y0, x1, y1) != (x, y, x + w, y + h) else obj)
    return kept
