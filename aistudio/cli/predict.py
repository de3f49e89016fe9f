"""``python predict.py run=<run | exported .onnx> input=<image | folder | dataset.json> [out=...] [key=value ...]``:
the Hydra task function around :mod:`aistudio.evaluation.predict`."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from aistudio.cli.run_args import report_user_error, run_overrides

OPTION_KEYS = ("batch_size", "topk", "score_threshold", "overlay_threshold", "save_overlays", "mask_format")
OWN_KEYS = ("run", "input", "out", "ckpt", "split", *OPTION_KEYS, "runs_root")


def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from aistudio.evaluation.exported_model import is_exported_file, open_exported
    from aistudio.evaluation.predict import PredictOptions, format_summary, predict, prepare
    from aistudio.evaluation.trained_run import open_run

    overrides = run_overrides(list(HydraConfig.get().overrides.task), OWN_KEYS)
    try:
        run = (open_exported(str(cfg.run), str(cfg.ckpt)) if is_exported_file(str(cfg.run))
               else open_run(str(cfg.run), cfg.get("runs_root") or None))
        options = PredictOptions(**{key: cfg.get(key) for key in OPTION_KEYS if cfg.get(key) is not None})
        job = prepare(run, cfg.get("input"), ckpt=str(cfg.ckpt), split=str(cfg.split), out=cfg.get("out"),
                      options=options, overrides=overrides)
        summary = predict(job)
    except Exception as err:
        report_user_error(err)
    print("\n" + format_summary(summary), flush=True)
    if summary["failed"]:
        sys.exit(1)
