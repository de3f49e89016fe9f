"""``python export.py run=<run> format=onnx|torchscript [ckpt=best] [opset=17] [key=value ...]``: the Hydra
task function around :mod:`aistudio.evaluation.export`."""

from __future__ import annotations

import json
import sys

from omegaconf import DictConfig

from aistudio.cli.run_args import report_user_error, run_overrides

OWN_KEYS = ("run", "ckpt", "format", "opset", "check_images", "out", "runs_root")


def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from aistudio.evaluation.export import export_run
    from aistudio.evaluation.trained_run import open_run

    overrides = run_overrides(list(HydraConfig.get().overrides.task), OWN_KEYS)
    try:
        run = open_run(str(cfg.run), cfg.get("runs_root") or None)
        record = export_run(run, str(cfg.format), ckpt=str(cfg.ckpt), overrides=overrides, opset=int(cfg.opset),
                            check_images=int(cfg.check_images), out=cfg.get("out") or None)
    except Exception as err:
        report_user_error(err)
    check = record["check"]
    folder = (cfg.get("out") or f"{record['run_dir']}/export")
    print(f"\nexported run {record['run']} ({record['checkpoint']['name']}) as {record['format']}: "
          f"{folder}/{record['file']}\ninput {record['input']['name']} {json.dumps(record['input']['shape'])} "
          f"float32; outputs {', '.join(record['outputs'])}\ncheck on {check['images']} validation images "
          f"({check['runtime']}): max |diff| {check['max_abs_diff']:.3g} (atol {check['atol']}, rtol {check['rtol']}) "
          f"-> {'passed' if check['passed'] else 'FAILED'}", flush=True)
    if not check["passed"]:
        print(f"Error: the exported file does not reproduce PyTorch's outputs within the tolerance (kept, with "
              f"its check in {record['file'].rsplit('.', 1)[0]}.json)", file=sys.stderr)
        sys.exit(1)
