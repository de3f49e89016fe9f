"""Drawing on pictures with numpy and cv2 only: boxes, class-coloured masks, blends, model inputs back to RGB.

Every function takes and returns RGB ``uint8`` arrays (HxWx3) and never changes its input, so the callers
(evaluation, prediction, example grids) can draw several overlays on one picture. No matplotlib here:
drawing a few thousand predictions must not pay for a figure each.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

_GOLDEN = 0.618033988749895  # hue step: consecutive classes land far apart on the colour wheel
BACKGROUND = (0, 0, 0)  # class_colors()[0]: semantic masks' background class
IGNORED = (255, 255, 255)  # colorize_mask's ignored (and out-of-range) pixels: never a class colour


def class_colors(count: int) -> np.ndarray:
    """``count`` x 3 uint8 RGB colours, the same for the same ``count`` and index on every call.

    Index 0 is black (the background class of semantic masks); the others walk the hue circle by the golden
    ratio with saturation/value varied in a short cycle, so neighbouring class indices differ clearly and
    none is black or white (those mean background / ignored).
    """
    if count < 0:
        raise ValueError(f"class_colors: count must be >= 0, got {count}")
    colors = np.zeros((count, 3), dtype=np.uint8)
    for index in range(1, count):
        step = index - 1
        hue = (step * _GOLDEN) % 1.0
        saturation = (0.95, 0.70, 0.85)[step % 3]
        value = (1.00, 0.80, 0.90, 0.70)[(step // 3) % 4]
        colors[index] = [round(c * 255) for c in colorsys.hsv_to_rgb(hue, saturation, value)]
    return colors


def _rgb(image: np.ndarray, what: str) -> np.ndarray:
    """A contiguous HxWx3 uint8 copy (gray HxW / HxWx1 becomes 3 channels), so cv2 can draw on it."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{what}: expected a uint8 image, got {image.dtype} (use to_rgb_uint8 first)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what}: expected an HxWx3 RGB image, got shape {image.shape}")
    return np.ascontiguousarray(image).copy()


def draw_boxes(image: np.ndarray, boxes: Sequence[Sequence[float]], labels: Sequence[str],
               color: tuple[int, int, int], scores: Sequence[float] | None = None) -> np.ndarray:
    """A copy of ``image`` with xyxy pixel ``boxes`` outlined in ``color`` and a small "label score" tag.

    Lines are 1 px (2 px on pictures over ~800 px) so small objects stay visible; the tag sits on a filled
    strip in the box colour above the box (inside it at the top edge), in black or white for contrast.
    """
    out = _rgb(image, "draw_boxes")
    if len(labels) != len(boxes):
        raise ValueError(f"draw_boxes: {len(boxes)} boxes but {len(labels)} labels")
    if scores is not None and len(scores) != len(boxes):
        raise ValueError(f"draw_boxes: {len(boxes)} boxes but {len(scores)} scores")
    height, width = out.shape[:2]
    color = tuple(int(c) for c in color)
    thickness = 2 if max(height, width) > 800 else 1
    font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, float(np.clip(max(height, width) / 1000.0, 0.3, 0.8))
    # black text on light colours, white on dark ones (ITU-R 601 luma)
    text_color = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 140 else (255, 255, 255)
    for index, box in enumerate(boxes):
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        if not all(np.isfinite((x1, y1, x2, y2))):
            continue
        left, right = sorted((int(np.clip(round(x1), 0, width - 1)), int(np.clip(round(x2), 0, width - 1))))
        top, bottom = sorted((int(np.clip(round(y1), 0, height - 1)), int(np.clip(round(y2), 0, height - 1))))
        cv2.rectangle(out, (left, top), (right, bottom), color, thickness)
        text = str(labels[index])
        if scores is not None:
            text = f"{text} {float(scores[index]):.2f}".strip()
        if not text:
            continue
        (text_w, text_h), baseline = cv2.getTextSize(text, font, font_scale, 1)
        strip_h = text_h + baseline + 2
        strip_top = top - strip_h if top - strip_h >= 0 else top  # above the box, or inside it at the edge
        strip_left = min(left, max(0, width - text_w - 2))
        cv2.rectangle(out, (strip_left, strip_top), (strip_left + text_w + 1, strip_top + strip_h - 1),
                      color, cv2.FILLED)
        cv2.putText(out, text, (strip_left + 1, strip_top + text_h + 1), font, font_scale, text_color, 1,
                    cv2.LINE_AA)
    return out


def colorize_mask(mask: np.ndarray, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """HxW class indices as HxWx3 RGB: class ``k`` in ``class_colors(num_classes)[k]``.

    ``ignore_index`` pixels (and any value outside ``0..num_classes-1``, which no class colour could
    stand for) are white, so they never pass for the black background class 0.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise ValueError(f"colorize_mask: expected an HxW mask, got shape {mask.shape}")
    indices = mask.astype(np.int64, copy=False)
    valid = (indices >= 0) & (indices < num_classes)
    if ignore_index is not None:
        valid &= indices != ignore_index
    out = np.empty((*mask.shape, 3), dtype=np.uint8)
    out[:] = IGNORED
    out[valid] = class_colors(num_classes)[indices[valid]]
    return out


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.5,
          where: np.ndarray | None = None) -> np.ndarray:
    """``(1 - alpha) * image + alpha * overlay``, only on the ``where`` pixels (HxW bool) when given.

    Masks read best half-transparent over the picture; ``where`` keeps the background pixels untouched.
    """
    base = _rgb(image, "blend")
    top = _rgb(overlay, "blend")
    if top.shape != base.shape:
        raise ValueError(f"blend: overlay shape {top.shape} differs from the image's {base.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"blend: alpha must be in [0, 1], got {alpha}")
    mixed = np.rint(base.astype(np.float32) * (1.0 - alpha) + top.astype(np.float32) * alpha)
    mixed = np.clip(mixed, 0, 255).astype(np.uint8)
    if where is None:
        return mixed
    where = np.asarray(where, dtype=bool)
    if where.shape != base.shape[:2]:
        raise ValueError(f"blend: where shape {where.shape} differs from the image's {base.shape[:2]}")
    base[where] = mixed[where]
    return base


def _channels_last(image: np.ndarray) -> np.ndarray:
    """HxWxC from CHW or HWC (HWC wins when both read as plausible: a 3x3x3 picture stays as it is)."""
    if image.ndim == 2:
        return image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"to_rgb_uint8: expected a CHW or HWC image, got shape {image.shape}")
    if image.shape[0] in (1, 3, 4) and image.shape[2] not in (1, 3, 4):
        return np.transpose(image, (1, 2, 0))
    return image


def to_rgb_uint8(image: np.ndarray, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> np.ndarray:
    """A model input (normalised float CHW or HWC) back as an HxWx3 uint8 picture.

    Floats become ``(x * std + mean) * 255``, rounded and clipped (no mean/std: ``x`` is taken as 0..1);
    uint8 passes through; other integer types are clipped to 0..255. One channel becomes three, a 4th
    (alpha) channel is dropped. Callers pass ``tensor.numpy()``; this module never imports torch.
    """
    array = _channels_last(np.asarray(image))
    if array.shape[2] == 4:
        array = array[:, :, :3]
    if array.shape[2] not in (1, 3):
        raise ValueError(f"to_rgb_uint8: expected 1, 3 or 4 channels, got shape {np.shape(image)}")
    if array.dtype == np.uint8:
        out = array
    elif np.issubdtype(array.dtype, np.integer):
        out = np.clip(array, 0, 255).astype(np.uint8)
    else:
        values = array.astype(np.float32)
        if std is not None:
            values = values * np.asarray(std, dtype=np.float32).reshape(1, 1, -1)
        if mean is not None:
            values = values + np.asarray(mean, dtype=np.float32).reshape(1, 1, -1)
        values = np.nan_to_num(values * 255.0, nan=0.0, posinf=255.0, neginf=0.0)
        out = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)
