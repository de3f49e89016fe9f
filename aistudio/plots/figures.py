"""The PNG figures of a run directory: training curves, confusion matrix, PR curves, example grids.

matplotlib is imported inside the functions (the ``aistudio`` command must start fast) with the Agg
backend (training nodes have no display). Every figure has a fixed size and dpi and is closed after
saving, is written atomically (a dashboard never reads half a PNG) and carries no version stamp, so the
same inputs give the same bytes.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from aistudio.plots.drawing import to_rgb_uint8
from aistudio.runs.atomic import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
_STAGES = ("train", "val", "test")
_NOT_CURVES = frozenset({"epoch", "step", "time", "epoch_time_s"})
_FEW_POINTS = 25  # markers on every point up to this many epochs (a 3-epoch run is 3 dots, not a line)
_MAX_PANEL_SIDE = 512  # example panels are shrunk to this first: a grid cell is ~250 px anyway


def _pyplot() -> Any:
    """pyplot on the Agg backend, imported on first use only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG atomically, without the matplotlib version in its metadata, and close it."""
    plt = _pyplot()
    path = Path(path)
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI,
                                                      metadata={"Software": None}), mode="wb")
    finally:
        plt.close(fig)
    return path


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _curve_group(key: str) -> tuple[str, str]:
    """(subplot, line label) of a metrics.json key: val_loss -> (loss, val), lr_head -> (lr, head)."""
    if key == "lr" or key.startswith("lr_"):
        return "lr", key[3:] or "lr"
    stage, _, rest = key.partition("_")
    if stage in _STAGES and rest:
        return rest, stage
    return key, key


def training_curves(entries: list[dict[str, Any]], path: Path, exclude: Iterable[str] = ()) -> Path | None:
    """One subplot per metric over the epochs (train/val/test lines together, learning rates in "lr").

    Per-epoch scalars only: bookkeeping keys (epoch, step, time, epoch_time_s), non-numbers and the
    ``exclude`` keys (per-class metrics would bury the curves) are left out. None when nothing is plotted.
    """
    skip = _NOT_CURVES | set(exclude)
    groups: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for index, entry in enumerate(entries):
        epoch = entry.get("epoch", index)
        x = float(epoch) if _is_number(epoch) else float(index)
        for key, value in entry.items():
            if key in skip or not _is_number(value):
                continue
            group, label = _curve_group(key)
            xs, ys = groups.setdefault(group, {}).setdefault(label, ([], []))
            xs.append(x)
            ys.append(float(value))
    if not groups:
        return None
    if "lr" in groups:  # the learning rates last: the metrics are what one looks at first
        groups["lr"] = groups.pop("lr")

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.2 * rows), squeeze=False,
                             layout="constrained")
    for ax, (name, lines) in zip(axes.flat, groups.items()):
        for label, (xs, ys) in lines.items():
            marker = "o" if len(xs) <= _FEW_POINTS else None
            ax.plot(xs, ys, marker=marker, markersize=4, linewidth=1.5, label=label)
        if name == "lr":
            values = [y for xs, ys in lines.values() for y in ys]
            if min(values) > 0 and max(values) / min(values) > 20:
                ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    return _save(fig, path)


def confusion_matrix(matrix: Sequence[Sequence[int]], names: Sequence[str], path: Path,
                     title: str = "confusion matrix") -> Path:
    """Rows = true class, columns = predicted; colour = the row's fraction (recall), text = the count.

    Readable from 2 to ~50 classes: the figure grows with the class count, cells show count and fraction
    up to 12 classes, the count only up to 25, and no text beyond (the colours still tell).
    """
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(names)
    if counts.ndim != 2 or counts.shape != (n, n):
        raise ValueError(f"confusion_matrix: expected a {n}x{n} matrix for {n} names, got shape {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)

    plt = _pyplot()
    side = float(np.clip(2.5 + 0.42 * n, 5.0, 24.0))
    fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, aspect=20 if n <= 25 else 40)
    colorbar.set_label("fraction of the true class (recall)")
    if n <= 25:
        font = 9 if n <= 12 else 7
        for row in range(n):
            for column in range(n):
                count = int(counts[row, column])
                if count == 0 and n > 12:
                    continue  # zeros only clutter a larger matrix
                text = f"{count}\n{fractions[row, column]:.2f}" if n <= 12 else str(count)
                ax.text(column, row, text, ha="center", va="center", fontsize=font,
                        color="white" if fractions[row, column] > 0.5 else "black")
    tick_font = 10 if n <= 12 else 8 if n <= 25 else 7
    longest = max((len(str(name)) for name in names), default=0)
    rotation = 90 if n > 20 else 45 if n > 6 or longest > 8 else 0
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels([str(name) for name in names], fontsize=tick_font, rotation=rotation,
                       ha="right" if rotation == 45 else "center",
                       rotation_mode="anchor" if rotation == 45 else "default")
    ax.set_yticklabels([str(name) for name in names], fontsize=tick_font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def precision_recall(curves: dict[str, Sequence[float]], recall: Sequence[float], path: Path,
                     title: str) -> Path:
    """One precision-over-recall line per class, labelled with its AP (the mean precision over recall).

    Precision values < 0 mean "no data" at that recall (COCO's -1): they are left out, and a class with
    no data at all gets no line, so a class absent from the split does not show as AP 0.
    """
    recall_values = np.asarray(recall, dtype=np.float64)
    lines: list[tuple[str, np.ndarray, np.ndarray, float]] = []
    for name, precision in curves.items():
        values = np.asarray(precision, dtype=np.float64)
        if values.shape != recall_values.shape:
            raise ValueError(f"precision_recall: class {name!r} has {values.size} precision values "
                             f"for {recall_values.size} recall thresholds")
        valid = np.isfinite(values) & (values >= 0)
        if valid.any():
            lines.append((str(name), recall_values[valid], values[valid], float(values[valid].mean())))

    plt = _pyplot()
    many = len(lines) > 10
    fig, ax = plt.subplots(figsize=(9.0 if many else 6.5, 6.0), layout="constrained")
    colors = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20" if len(lines) <= 20 else "turbo")
    for index, (name, xs, ys, ap) in enumerate(lines):
        color = colors(index) if len(lines) <= 20 else colors(index / max(1, len(lines) - 1))
        ax.plot(xs, ys, linewidth=1.5, color=color, label=f"{name} (AP {ap:.3f})")
    if lines:
        if many:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      ncol=1 if len(lines) <= 25 else 2)
        else:
            ax.legend(fontsize=8, loc="lower left")
    else:
        ax.text(0.5, 0.5, "no precision/recall data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def _panel(image: np.ndarray) -> np.ndarray:
    """An RGB uint8 panel no larger than needed for a grid cell (saves memory and PNG size)."""
    panel = to_rgb_uint8(image)
    height, width = panel.shape[:2]
    scale = _MAX_PANEL_SIDE / max(height, width, 1)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        panel = cv2.resize(panel, size, interpolation=cv2.INTER_AREA)
    return panel


def example_grid(panels: Sequence[np.ndarray], captions: Sequence[str], path: Path, columns: int = 4,
                 colors: Sequence[str] | None = None) -> Path:
    """Pictures in a grid, each scaled to fit its cell with its caption below (in ``colors[i]`` if given).

    Colours let a grid of predictions show right (e.g. "green") and wrong ("red") at a glance.
    """
    if len(captions) != len(panels):
        raise ValueError(f"example_grid: {len(panels)} panels but {len(captions)} captions")
    if colors is not None and len(colors) != len(panels):
        raise ValueError(f"example_grid: {len(panels)} panels but {len(colors)} colours")
    if columns < 1:
        raise ValueError(f"example_grid: columns must be >= 1, got {columns}")

    plt = _pyplot()
    count = max(1, len(panels))
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.8 * columns, 3.2 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for index, (ax, image, caption) in enumerate(zip(axes.flat, panels, captions)):
        ax.imshow(_panel(image), interpolation="antialiased")
        text = "\n".join(textwrap.wrap(re.sub(r"\s+", " ", str(caption)), 34)[:3])
        ax.set_xlabel(text, fontsize=8, color=colors[index] if colors is not None else "black")
    if not panels:
        axes.flat[0].text(0.5, 0.5, "no examples", ha="center", va="center", transform=axes.flat[0].transAxes)
    return _save(fig, path)


def png_array(path: Path) -> np.ndarray:
    """The PNG at ``path`` as an HxWx3 uint8 RGB array (TensorBoard's add_image with dataformats="HWC")."""
    data = np.fromfile(str(path), dtype=np.uint8)  # cv2.imread cannot open non-ASCII paths on Windows
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"png_array: {path} is not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
