"""``python eval.py run=<run> [ckpt=best|last|<path>] [split=test|val|train] [key=value ...]``: the Hydra
task function around :mod:`aistudio.evaluation.evaluate`."""

from __future__ import annotations

from omegaconf import DictConfig

from aistudio.cli.run_args import report_user_error, run_overrides

OWN_KEYS = ("run", "ckpt", "split", "runs_root")


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
        report_user_error(err)
    path = write_evaluation(run, result)
    print("\n" + format_evaluation(result) + f"\n\nwritten: {path}", flush=True)
