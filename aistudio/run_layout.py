"""The standard run directory's names and the runs root, each named once for every reader and writer.

Torch- and Lightning-free, at the bottom of the layers: train.py's start-up, the ``aistudio``
command, the sweep recorder and the coming services all read runs through these names.
"""

from __future__ import annotations

import os
from pathlib import Path

RUN_FILE = "run.json"  # status, attempts, best, test metrics (aistudio.runs.record)
CONFIG_FILE = "config.json"  # the frozen resolved config
METRICS_FILE = "metrics.json"  # one entry per epoch
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = f"{CHECKPOINT_DIR}/best.ckpt"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/last.ckpt"
TRAINING_LOG = "logs/training.log"
EVAL_DIR = "eval"  # eval.py's results: eval/<split>-<ckpt>.json

RUNS_ROOT_ENV = "AISTUDIO_RUNS_DIR"
DEFAULT_RUNS_ROOT = "runs"  # relative to the folder train.py runs in


def default_runs_root() -> Path:
    """``$AISTUDIO_RUNS_DIR``, else ``./runs`` (conf/paths/default.yaml resolves ``paths.runs_root`` here)."""
    return Path(os.environ.get(RUNS_ROOT_ENV) or DEFAULT_RUNS_ROOT)
