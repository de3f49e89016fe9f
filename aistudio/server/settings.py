"""What one server instance works on: the runs root, the data roots, the configs and the entry script."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "conf"
TRAIN_SCRIPT = REPO / "train.py"
STATIC_DIR = Path(__file__).resolve().parent / "static"  # the dashboard page, when it is there
EXPERIMENTS_DIR = ".experiments"  # saved experiments, under the runs root (hidden: the run catalog skips it)


def default_data_roots() -> list[Path]:
    """Where request overrides may point datasets: ``paths.data_dir`` (``$AISTUDIO_DATA_DIR``, else
    ``~/.cache/aistudio/datasets``, as conf/paths/default.yaml says) and ``../shared/data`` when present."""
    data_dir = os.environ.get("AISTUDIO_DATA_DIR") or str(Path.home() / ".cache" / "aistudio" / "datasets")
    roots = [Path(data_dir).expanduser()]
    shared = REPO.parent / "shared" / "data"
    if shared.is_dir():
        roots.append(shared)
    return roots


@dataclass
class Settings:
    """``heartbeat_s``: the SSE keep-alive comment period; ``stale_check_s``: how often an active run's
    liveness is re-checked when no file changes (a killed process writes nothing)."""

    runs_root: Path
    data_roots: list[Path] = field(default_factory=default_data_roots)
    conf_dir: Path = CONF_DIR
    train_script: Path = TRAIN_SCRIPT
    heartbeat_s: float = 15.0
    stale_check_s: float = 2.0
    max_body_bytes: int = 64 * 1024
    max_streamed_runs: int = 100

    def __post_init__(self) -> None:
        self.runs_root = Path(self.runs_root).expanduser().resolve()
        self.data_roots = [Path(r).expanduser().resolve() for r in self.data_roots]

    @property
    def experiments_dir(self) -> Path:
        return self.runs_root / EXPERIMENTS_DIR

    @property
    def recipes_dir(self) -> Path:
        return self.conf_dir / "experiment"
