"""Example predictions drawn against the ground truth (the grid in plots/ and TensorBoard's images).

Each task turns one batch into pictures with :mod:`aistudio.plots.drawing`; the functions here are the
per-task drawings, kept apart from the modules so they can be read (and tested) on their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TRUE_COLOR, PREDICTED_COLOR = (40, 200, 40), (230, 40, 40)
SCORE_THRESHOLD = 0.5  # detections drawn in examples (evaluation uses every score)


@dataclass
class Example:
    panel: np.ndarray  # HxWx3 uint8 RGB
    caption: str
    color: str = "black"  # caption colour: green right, red wrong


def _picture(image: torch.Tensor, mean: list[float] | None, std: list[float] | None) -> np.ndarray:
    from aistudio.plots.drawing import to_rgb_uint8

    return to_rgb_uint8(image.detach().float().cpu().numpy(), mean, std)


def classification_examples(images: torch.Tensor, labels: torch.Tensor, probabilities: torch.Tensor,
                            names: list[str], mean: list[float] | None, std: list[float] | None) -> list[Example]:
    examples = []
    for image, label, scores in zip(images, labels.tolist(), probabilities):
        score, predicted = (float(v) for v in scores.max(0))
        predicted = int(predicted)
        right = predicted == label
        examples.append(Example(_picture(image, mean, std), f"{names[predicted]} {score:.2f}"
                                + ("" if right else f" (true {names[label]})"), "green" if right else "red"))
    return examples


def detection_examples(images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
                       predictions: list[dict[str, torch.Tensor]], names: list[str]) -> list[Example]:
    from aistudio.plots.drawing import draw_boxes

    examples = []
    for image, target, prediction in zip(images, targets, predictions):
        picture = _picture(image, None, None)
        truth = [names[int(c) - 1] for c in target["labels"].tolist()]
        picture = draw_boxes(picture, target["boxes"].tolist(), truth, TRUE_COLOR)
        keep = prediction["scores"] >= SCORE_THRESHOLD
        labels = [names[int(c) - 1] for c in prediction["labels"][keep].tolist()]
        picture = draw_boxes(picture, prediction["boxes"][keep].tolist(), labels, PREDICTED_COLOR,
                             scores=prediction["scores"][keep].tolist())
        examples.append(Example(picture, f"{len(truth)} true (green), {len(labels)} predicted >= {SCORE_THRESHOLD}"))
    return examples


def segmentation_examples(images: torch.Tensor, masks: torch.Tensor, predicted: torch.Tensor, num_classes: int,
                          ignore_index: int, mean: list[float] | None, std: list[float] | None) -> list[Example]:
    from aistudio.plots.drawing import colorize_mask

    examples = []
    for image, mask, labels in zip(images, masks, predicted):
        truth = colorize_mask(mask.cpu().numpy(), num_classes, ignore_index)
        guess = colorize_mask(labels.cpu().numpy(), num_classes, None)
        valid = mask != ignore_index
        accuracy = float((labels[valid] == mask[valid]).float().mean()) if bool(valid.any()) else float("nan")
        panel = np.concatenate([_picture(image, mean, std), truth, guess], axis=1)
        examples.append(Example(panel, f"image | truth | prediction ({accuracy:.0%} pixels right)"))
    return examples
