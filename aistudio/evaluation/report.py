"""An evaluation result as the table eval.py prints: metrics, per-class figures, confusion matrix."""

from __future__ import annotations

import re
from typing import Any

MAX_MATRIX_CLASSES = 12  # a wider confusion matrix does not fit a terminal; it is in the JSON


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]


def format_evaluation(result: dict[str, Any]) -> str:
    dataset, checkpoint = result["dataset"], result["checkpoint"]
    lines = [f"run {result['run']}  {checkpoint['path']} (epoch {checkpoint.get('epoch')})  "
             f"split {result['split']} of {dataset['file']} (split_index {dataset['split_index']}, "
             f"{dataset['images']} images, sha256 {dataset['sha256'][:12]})"]
    if result["overrides"]:
        lines.append("overrides: " + " ".join(result["overrides"]))
    per_class = result.get("per_class") or {}
    summary = {k: v for k, v in result["metrics"].items()
               if not any(k.endswith("_" + c) for c in _metric_suffixes(per_class))}
    lines += [""] + _table(["metric", "value"], [[k, _cell(v)] for k, v in summary.items()])
    if per_class:
        columns = list(next(iter(per_class.values())))
        lines += [""] + _table(["class", *columns], [[name, *(_cell(v.get(c)) for c in columns)]
                                                     for name, v in per_class.items()])
    matrix = result.get("confusion_matrix")
    if matrix and len(matrix) <= MAX_MATRIX_CLASSES:
        names = list(per_class) or [str(i) for i in range(len(matrix))]
        lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
        lines += _table(["", *names], [[name, *map(str, row)] for name, row in zip(names, matrix)])
    lines += [""] + [f"note: {note}" for note in result.get("notes") or []]
    return "\n".join(lines).rstrip()


def _metric_suffixes(per_class: dict[str, Any]) -> list[str]:
    """Per-class metric keys (detection's ``test_ap_<class>``) are shown in the class table instead."""
    return [re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower() for name in per_class]
