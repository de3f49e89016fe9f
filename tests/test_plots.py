"""aistudio.plots: every figure is a real PNG of a sensible size; the drawing helpers put the right pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from aistudio.plots import drawing, figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_size: tuple[int, int] = (200, 200),
               max_size: tuple[int, int] = (4000, 4000)) -> tuple[int, int]:
    """The file is a PNG that PIL and cv2 both open, (width, height) within the bounds."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert min_size[0] <= width <= max_size[0] and min_size[1] <= height <= max_size[1], (width, height)
    decoded = cv2.imread(str(path))
    assert decoded is not None and decoded.shape[:2] == (height, width)
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temp file
    return width, height


METRICS = [
    {"epoch": epoch, "step": 10 * (epoch + 1), "time": f"2025-01-01T00:0{epoch}:00Z", "epoch_time_s": 3.2,
     "train_loss": 1.2 - 0.3 * epoch, "val_loss": 1.3 - 0.25 * epoch, "train_acc": 0.5 + 0.1 * epoch,
     "val_acc": 0.45 + 0.12 * epoch, "val_f1": 0.4 + 0.1 * epoch, "val_ap_circle": 0.3 + 0.2 * epoch,
     "lr_backbone": 1e-4 / (epoch + 1), "lr_head": 1e-3 / (epoch + 1)}
    for epoch in range(3)
]


def test_training_curves(tmp_path: Path) -> None:
    path = figures.training_curves(METRICS, tmp_path / "plots" / "curves.png", exclude=["val_ap_circle"])
    assert path == tmp_path / "plots" / "curves.png"
    width, height = assert_png(path)
    # loss, acc, f1, lr: 3 columns, 2 rows
    assert width > height and width >= 3 * 300 and height >= 2 * 250
    assert figures.training_curves([], tmp_path / "empty.png") is None
    assert not (tmp_path / "empty.png").exists()
    only_bookkeeping = [{"epoch": 0, "step": 1, "time": "t", "epoch_time_s": 1.0}]
    assert figures.training_curves(only_bookkeeping, tmp_path / "none.png") is None


def test_training_curves_deterministic_and_test_stage(tmp_path: Path) -> None:
    entries = [dict(e) for e in METRICS] + [{"epoch": 2, "test_loss": 0.7, "test_acc": 0.8, "flag": True,
                                             "note": "x", "nan_metric": float("nan")}]
    first = figures.training_curves(entries, tmp_path / "a.png")
    second = figures.training_curves(entries, tmp_path / "b.png")
    assert first.read_bytes() == second.read_bytes()
    assert_png(first)


@pytest.mark.parametrize("classes", [3, 40])
def test_confusion_matrix(tmp_path: Path, classes: int) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 20, size=(classes, classes)) + np.eye(classes, dtype=np.int64) * 50
    matrix[0] = 0  # a class absent from the split: no division by zero
    names = [f"class_{index}" for index in range(classes)]
    path = figures.confusion_matrix(matrix.tolist(), names, tmp_path / f"cm{classes}.png", title="val")
    width, height = assert_png(path, min_size=(400, 400))
    if classes == 40:
        assert width >= 1500 and height >= 1500  # grows with the class count
    else:
        assert width <= 900 and height <= 900
    with pytest.raises(ValueError):
        figures.confusion_matrix(matrix.tolist(), names[:-1], tmp_path / "bad.png")


def test_precision_recall(tmp_path: Path) -> None:
    recall = np.linspace(0.0, 1.0, 101)
    curves = {
        "circle": (1.0 - 0.5 * recall**2).tolist(),
        "square": np.where(recall > 0.8, -1.0, 0.9 - 0.3 * recall).tolist(),  # partly no data
        "triangle": [-1.0] * 101,  # absent from the split: skipped, no crash
    }
    path = figures.precision_recall(curves, recall.tolist(), tmp_path / "pr.png", title="val PR")
    assert_png(path, min_size=(400, 400))
    empty = figures.precision_recall({"triangle": [-1.0] * 101}, recall.tolist(), tmp_path / "empty_pr.png",
                                     title="nothing")
    assert_png(empty, min_size=(400, 400))
    with pytest.raises(ValueError):
        figures.precision_recall({"circle": [0.5] * 3}, recall.tolist(), tmp_path / "bad.png", title="x")


def test_example_grid_and_png_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    panels = [rng.integers(0, 256, size=shape, dtype=np.uint8)
              for shape in [(32, 32, 3), (64, 20, 3), (20, 90, 3), (700, 900, 3), (16, 16, 3)]]
    captions = ["circle", "square (true: circle)", "a rather long caption " * 4, "big", "tiny"]
    path = figures.example_grid(panels, captions, tmp_path / "grid.png", columns=3,
                                colors=["green", "red", "green", "green", "red"])
    width, height = assert_png(path)
    assert width > height  # 3 columns x 2 rows
    array = figures.png_array(path)
    assert array.dtype == np.uint8 and array.shape == (height, width, 3)
    assert 0 < array.mean() < 255
    assert_png(figures.example_grid([], [], tmp_path / "no_examples.png"), min_size=(100, 100))
    with pytest.raises(ValueError):
        figures.example_grid(panels, captions[:2], tmp_path / "bad.png")


def test_class_colors() -> None:
    colors = drawing.class_colors(256)
    assert colors.shape == (256, 3) and colors.dtype == np.uint8
    assert len({tuple(c) for c in colors}) == 256  # distinct
    assert tuple(colors[0]) == (0, 0, 0)
    assert not any(tuple(c) == (255, 255, 255) for c in colors)
    assert np.array_equal(drawing.class_colors(10), colors[:10])  # deterministic, prefix-stable
    assert drawing.class_colors(0).shape == (0, 3)


def test_draw_boxes() -> None:
    image = np.full((100, 120, 3), 30, dtype=np.uint8)
    color = (255, 200, 0)
    out = drawing.draw_boxes(image, [[10, 20, 60, 80]], ["circle"], color, scores=[0.87])
    assert out.shape == image.shape and out.dtype == np.uint8
    assert tuple(out[50, 10]) == color and tuple(out[50, 60]) == color  # left/right edges
    assert tuple(out[80, 35]) == color  # bottom edge
    assert tuple(out[50, 35]) == (30, 30, 30)  # inside untouched
    assert (out[:20, 10:60] != 30).any()  # the label tag sits above the box
    assert (image == 30).all()  # the input is not changed
    # a box at the image border and out of bounds: clipped, still drawn
    edge = drawing.draw_boxes(image, [[-5, 0, 200, 50]], [""], (0, 0, 255))
    assert tuple(edge[25, 0]) == (0, 0, 255) and tuple(edge[25, 119]) == (0, 0, 255)
    with pytest.raises(ValueError):
        drawing.draw_boxes(image, [[0, 0, 5, 5]], [], color)


def test_colorize_mask_and_blend() -> None:
    mask = np.array([[0, 1, 2], [3, 255, 1]], dtype=np.uint8)
    colors = drawing.class_colors(4)
    out = drawing.colorize_mask(mask, 4)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    for k in range(4):
        assert (out[mask == k] == colors[k]).all()
    assert tuple(out[1, 1]) == (255, 255, 255)  # ignored

    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    overlay = np.full((2, 3, 3), 200, dtype=np.uint8)
    assert (drawing.blend(image, overlay, alpha=0.5) == 150).all()
    where = mask > 0
    partial = drawing.blend(image, overlay, alpha=0.25, where=where)
    assert (partial[where] == 125).all() and (partial[~where] == 100).all()


def test_to_rgb_uint8_inverts_normalisation() -> None:
    rng = np.random.default_rng(2)
    original = rng.integers(0, 256, size=(3, 24, 32), dtype=np.uint8)  # CHW, as a model input
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalised = ((original.astype(np.float32) / 255.0 - np.array(mean)[:, None, None])
                  / np.array(std)[:, None, None]).astype(np.float32)
    back = drawing.to_rgb_uint8(normalised, mean, std)
    assert back.shape == (24, 32, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - original.transpose(1, 2, 0).astype(int)).max() <= 1
    hwc = drawing.to_rgb_uint8(normalised.transpose(1, 2, 0), mean, std)
    assert np.array_equal(hwc, back)
    rgb = original.transpose(1, 2, 0).copy()
    assert np.array_equal(drawing.to_rgb_uint8(rgb), rgb)  # uint8 passes through
    gray = drawing.to_rgb_uint8(np.full((1, 8, 8), 0.5, dtype=np.float32))
    assert gray.shape == (8, 8, 3) and (gray == 128).all()
