"""Per-class figures from a confusion matrix (rows = true class, columns = predicted class).

The test stage of classification and semantic segmentation accumulates one confusion matrix; these
functions turn it into what ``eval/<split>-<ckpt>.json`` and the plots show per class. A class with no
examples and no predictions has no defined score: it is reported as ``None`` (JSON null), not as 0,
so it cannot be mistaken for a class the model always gets wrong.
"""

from __future__ import annotations

from typing import Any

import torch


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> list[float | None]:
    return [float(n) / float(d) if d > 0 else None for n, d in zip(numerator.tolist(), denominator.tolist())]


def classification_report(matrix: torch.Tensor, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per class: precision, recall, F1 and support (true examples)."""
    matrix = matrix.double().cpu()
    hits, predicted, actual = matrix.diagonal(), matrix.sum(0), matrix.sum(1)
    precision, recall = _ratio(hits, predicted), _ratio(hits, actual)
    report = {}
    for i, name in enumerate(names):
        p, r = precision[i], recall[i]
        f1 = (2 * p * r / (p + r) if p + r > 0 else 0.0) if p is not None and r is not None else None
        report[name] = {"precision": p, "recall": r, "f1": f1, "support": int(actual[i])}
    return report


def segmentation_report(matrix: torch.Tensor, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per class: IoU, Dice and pixel count (true pixels; ignored pixels are in no row or column)."""
    matrix = matrix.double().cpu()
    hits, predicted, actual = matrix.diagonal(), matrix.sum(0), matrix.sum(1)
    iou = _ratio(hits, actual + predicted - hits)
    dice = _ratio(2 * hits, actual + predicted)
    return {name: {"iou": iou[i], "dice": dice[i], "pixels": int(actual[i])} for i, name in enumerate(names)}
