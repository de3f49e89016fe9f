"""What a task function needs to know about the Hydra job it runs in (single run or sweep job)."""

from __future__ import annotations

import shutil
from pathlib import Path

from aistudio.run_layout import RUN_FILE


def is_sweep_job() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def parallel_sweep_job() -> bool:
    """A job of a parallel launcher (joblib): its siblings share the devices on purpose."""
    from hydra.core.hydra_config import HydraConfig

    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    return is_sweep_job() and "BasicLauncher" not in launcher


def remove_unused_run_dir(run_dir: Path) -> None:
    """A refused new single run leaves no directory behind (Hydra made it, with only its own files)."""
    if not is_sweep_job() and not (run_dir / RUN_FILE).exists() \
            and {p.name for p in run_dir.iterdir()} <= {".hydra", "logs"}:
        shutil.rmtree(run_dir, ignore_errors=True)
