"""Classification's per-epoch scores from one confusion matrix, accumulated without a host sync.

torchmetrics' macro F1/precision/recall count each batch with ``torch.bincount``, which on a GPU reads
the largest value back to the host (a sync every step), and four metrics launch four sets of kernels.
Here one ``index_add_`` per batch fills a (classes x classes) matrix on the device; accuracy (micro)
and macro F1/precision/recall come from it at the epoch's end, with torchmetrics' own definitions (a
class never seen nor predicted is left out of the macro mean), so the logged values are the same.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

SCORES = ("acc", "f1", "precision", "recall")


class ClassificationScores(Metric):
    """``{prefix}acc`` (micro) and ``{prefix}f1`` / ``precision`` / ``recall`` (macro) of an epoch.

    Stands in for a ``MetricCollection`` of the four torchmetrics classes: ``update(logits or labels,
    targets)``, ``compute()`` -> dict, ``reset()``, ``clone(prefix=...)``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, prefix: str = "", **kwargs: Any):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.prefix = prefix
        self.add_state("confusion", torch.zeros(self.num_classes * self.num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        """``predictions``: (N, classes) scores or (N,) class indices; ``targets``: (N,) class indices."""
        predicted = predictions.argmax(dim=1) if predictions.dim() > 1 else predictions
        cells = targets.long().flatten() * self.num_classes + predicted.long().flatten()
        self.confusion.index_add_(0, cells, torch.ones_like(cells))  # type: ignore[operator]

    def compute(self) -> dict[str, torch.Tensor]:
        matrix = self.confusion.view(self.num_classes, self.num_classes).double()  # type: ignore[union-attr]
        tp = matrix.diag()
        fp = matrix.sum(0) - tp  # predicted as the class, truly another
        fn = matrix.sum(1) - tp
        seen = (tp + fp + fn) > 0  # torchmetrics' macro mean leaves out classes with no example nor prediction
        total = matrix.sum()

        def macro(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
            score = torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.zeros_like(numerator))
            weights = seen.double()
            return (score * weights).sum() / weights.sum().clamp(min=1)

        scores = {"acc": torch.where(total > 0, tp.sum() / total.clamp(min=1), torch.zeros_like(total)),
                  "f1": macro(2 * tp, 2 * tp + fp + fn), "precision": macro(tp, tp + fp), "recall": macro(tp, tp + fn)}
        return {f"{self.prefix}{name}": value.float() for name, value in scores.items()}

    def clone(self, prefix: str = "") -> ClassificationScores:  # type: ignore[override]
        twin = super().clone()
        twin.prefix = prefix
        return twin
