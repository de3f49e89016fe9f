"""``python eval.py run=<run> [ckpt=best|last|<path>] [split=test|val|train] [key=value ...]``: the Hydra
task function around :mod:`aistudio.evaluation.evaluate`."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from aistudio import AistudioError, user_error
from aistudio.cli.run_args import run_overrides
from aistudio.run_layout import EVAL_DIR
from aistudio.runs.catalog import find_run

OWN_KEYS = ("run", "ckpt", "split", "runs_root")


def eval_dir(run: str, root: str | None = None) -> str:
    """``hydra.run.dir``: the evaluated run's eval/ folder (its eval.log goes there); a temporary folder
    while the run cannot be found, which the task function then reports."""
    try:
        return str(find_run(str(run), root or None, latest_of=("completed",)) / EVAL_DIR)
    except AistudioError:
        return str(Path(tempfile.gettempdir()) / "aistudio-eval")


def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from aistudio.evaluation.evaluate import evaluate, write_evaluation
    from aistudio.evaluation.report import format_evaluation
    from aistudio.evaluation.trained_run import open_run

    overrides = run_overrides(list(HydraConfig.get().overrides.task), OWN_KEYS)
    try:
        run = open_run(str(cfg.run), cfg.get("runs_root") or None)
        result = evaluate(run, ckpt=str(cfg.ckpt), split=str(cfg.split), overrides=overrides)
    except Exception as err:
        problem = user_error(err)
        if problem is None:
            raise
        print(f"\nError: {problem}", file=sys.stderr)
        sys.exit(1)
    path = write_evaluation(run, result)
    print("\n" + format_evaluation(result) + f"\n\nwritten: {path}", flush=True)
