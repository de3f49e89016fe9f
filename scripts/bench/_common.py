"""Helpers shared by the benchmark scripts: repo paths, temp run/data dirs, plain-text tables.

Benchmarks must never write into the repository, so every script points AISTUDIO_RUNS_DIR and
AISTUDIO_DATA_DIR at a temp folder (removed at exit unless AISTUDIO_BENCH_KEEP=1).
"""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def isolate(name: str, data_dir: str | None = None) -> tuple[Path, Path]:
    """Set AISTUDIO_RUNS_DIR (always fresh) and AISTUDIO_DATA_DIR (fresh unless ``data_dir``); return both."""
    root = Path(tempfile.mkdtemp(prefix=f"aistudio-bench-{name}-"))
    if os.environ.get("AISTUDIO_BENCH_KEEP") == "1":
        print(f"(keeping {root})")
    else:
        atexit.register(shutil.rmtree, root, True)
    runs = root / "runs"
    data = Path(data_dir).expanduser().resolve() if data_dir else root / "data"
    runs.mkdir()
    data.mkdir(parents=True, exist_ok=True)
    os.environ["AISTUDIO_RUNS_DIR"] = str(runs)
    os.environ["AISTUDIO_DATA_DIR"] = str(data)
    return runs, data


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned text table; floats shown with 3 significant decimals."""
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
