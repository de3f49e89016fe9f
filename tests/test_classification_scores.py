"""Classification's sync-free epoch scores equal torchmetrics' accuracy (micro) and macro F1/precision/recall."""

import pytest
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from aistudio.tasks.classification_scores import ClassificationScores


def reference(num_classes: int) -> MetricCollection:
    return MetricCollection({"acc": MulticlassAccuracy(num_classes, average="micro"),
                             "f1": MulticlassF1Score(num_classes, average="macro"),
                             "precision": MulticlassPrecision(num_classes, average="macro"),
                             "recall": MulticlassRecall(num_classes, average="macro")}, prefix="val_")


@pytest.mark.parametrize("num_classes", [2, 5, 10])
def test_scores_match_torchmetrics_including_classes_never_seen(num_classes):
    generator = torch.Generator().manual_seed(num_classes)
    for _ in range(15):
        expected, scores = reference(num_classes), ClassificationScores(num_classes).clone(prefix="val_")
        for _ in range(3):  # several batches, some classes absent from targets and predictions
            size = int(torch.randint(1, 20, (), generator=generator))
            highest = int(torch.randint(1, num_classes + 1, (), generator=generator))
            targets = torch.randint(0, highest, (size,), generator=generator)
            logits = torch.randn(size, num_classes, generator=generator)
            expected.update(logits, targets)
            scores.update(logits, targets)
        want, got = expected.compute(), scores.compute()
        assert got.keys() == want.keys()
        for key in want:
            assert torch.allclose(got[key], want[key], atol=1e-6), (key, got[key], want[key])


def test_reset_clears_the_epoch_and_clones_are_independent():
    train = ClassificationScores(3).clone(prefix="train_")
    val = train.clone(prefix="val_")
    train.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    assert train.compute()["train_acc"].item() == pytest.approx(2 / 3)
    assert int(val.confusion.sum()) == 0
    train.reset()
    train.update(torch.tensor([2]), torch.tensor([2]))
    assert train.compute()["train_acc"].item() == 1.0
