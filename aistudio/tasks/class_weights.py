"""Per-class loss weights from the ``task.module.class_weights`` setting and the train split's class counts.

Tasks call this themselves (the build path hands every task the train split's class counts), so what
``balanced`` means stays with the task that knows what its counts count.
"""

from __future__ import annotations

from typing import Literal

from aistudio import AistudioError

# what task.module.class_weights may say: nothing, sklearn's "balanced", or one weight per class
ClassWeights = Literal["balanced", "none"] | list[float] | None


def class_weights(setting: ClassWeights, counts: list[int] | None, num_classes: int) -> list[float] | None:
    """``balanced`` -> n_samples / (n_classes * count) per class, as scikit-learn does; a list is taken as
    given (one value per class). ``counts``: the train split's examples per class (None: this task has no
    per-class counts, so ``balanced`` is refused)."""
    if setting in (None, "none"):
        return None
    if setting == "balanced":
        if not counts or not any(counts):
            raise AistudioError(f"task.module.class_weights=balanced needs per-class counts, which this task's "
                                f"annotations do not give — give one weight per class ({num_classes} values)")
        total = sum(counts)
        return [total / (len(counts) * c) if c else 0.0 for c in counts]
    weights = [float(w) for w in setting]  # type: ignore[union-attr]
    if len(weights) != num_classes:
        raise AistudioError(f"task.module.class_weights has {len(weights)} values for {num_classes} classes")
    if not any(weights):
        raise AistudioError(f"task.module.class_weights: every weight is 0 — give one positive weight per class "
                            f"({num_classes} values)")
    return weights
