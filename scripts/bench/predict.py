"""predict.py throughput (images/s): the real command versus a bare ``model(x)`` loop over the same
preprocessed images, side by side, for the default digits classifier and the mobilenet detector.

predict side = ``python predict.py run=<run> input=<images>`` in a subprocess, as a user runs it; its
images/s is summary.json's ``timing``: the prediction loop (decoding and the eval transform in the
run's DataLoader workers, the model, the writers streaming predictions.csv/json to disk), without the
interpreter start-up and model loading (also reported: the command's whole wall time). bare side = the
same checkpoint's model, rebuilt through the same path, over the same images decoded and preprocessed
by the same eval transform beforehand (not timed), in batches of the same size:
``with torch.inference_mode(): model(x)``. Also shown: the same loop decoding and preprocessing each
batch first, in one process (``serial``). Rounds alternate predict, bare. Target: predict/bare >= 0.9
(median of the rounds).

The runs are trained first (1 epoch each; ``--cls-run`` / ``--det-run`` reuse existing ones): digits
resnet18 (the default ``python train.py``), predicting on the 1,797 digits; and
fasterrcnn_mobilenet_v3_large_320_fpn on generated 128 px shapes, predicting on ``--det-images`` new ones.

    .venv/bin/python scripts/bench/predict.py [--rounds 3] [--det-images 120] [--cls-run DIR] [--det-run DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import REPO, isolate, median, table

sys.path.insert(0, str(REPO))  # this checkout's aistudio, even without `pip install -e .`

TARGET_RATIO = 0.9


def train(runs: Path, name: str, overrides: list[str]) -> Path:
    run_dir = runs / name
    print(f"training {name}: train.py {' '.join(overrides)}", flush=True)
    proc = subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}",
                           "callbacks.progress_bar.kind=none"], cwd=REPO, env=os.environ, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"train.py {name} failed:\n{proc.stderr[-3000:]}")
    return run_dir


def run_predict(run_dir: Path, source: Path, out: Path) -> dict[str, Any]:
    """``python predict.py`` once; summary.json's timing plus the command's wall time."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "predict.py", f"run={run_dir}", f"input={source}", f"out={out}",
                           "callbacks.progress_bar.kind=none"], cwd=REPO, env=os.environ, capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"predict.py failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    timing = summary["timing"]
    return {"images": summary["predicted"], "seconds": timing["predict_s"], "wall_s": round(wall, 2),
            "batch_size": timing["batch_size"], "num_workers": timing["num_workers"]}


def run_bare(run_dir: Path, source: Path, batch_size: int) -> dict[str, Any]:
    """The run's model over the same images, preprocessed beforehand; only ``model(x)`` is timed. Also
    timed: the same loop decoding and preprocessing each batch first, in this one process (``serial``:
    what a minimal hand-written script does, without writing anything)."""
    import torch
    from hydra.utils import instantiate

    from aistudio.evaluation.loading import load_trained_module
    from aistudio.evaluation.prediction_inputs import resolve_inputs
    from aistudio.evaluation.prediction_model import PredictionDataset
    from aistudio.evaluation.trained_run import open_run

    run = open_run(str(run_dir))
    config = run.config
    module, _, _ = load_trained_module(config, run.checkpoint("best"))
    model = module.model.eval()
    files = [i.file for i in resolve_inputs(str(source), "all", config["data"]).images]
    dataset = PredictionDataset(files, instantiate(config["data"]["eval_transform"], _convert_="all"), int(config["data"]["channels"]))
    detector = config["task"]["name"] in ("detection", "instance_segmentation")
    spans = [range(i, min(i + batch_size, len(dataset))) for i in range(0, len(dataset), batch_size)]

    def batch_of(span: range) -> Any:
        images = [dataset[i][0] for i in span]
        return images if detector else torch.stack(images)

    with torch.inference_mode():
        start = time.perf_counter()
        for span in spans:
            model(batch_of(span))
        serial = time.perf_counter() - start
        batches = [batch_of(span) for span in spans]
        model(batches[0])  # warm-up (predict.py's first batch is timed: this favours the bare side slightly)
        start = time.perf_counter()
        for batch in batches:
            model(batch)
        seconds = time.perf_counter() - start
    return {"images": len(dataset), "seconds": seconds, "serial_seconds": serial, "threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="predict/bare pairs per model, alternated")
    parser.add_argument("--det-images", type=int, default=120, help="generated shapes images the detector predicts")
    parser.add_argument("--cls-run", help="a trained digits run to use (default: train one, 1 epoch)")
    parser.add_argument("--det-run", help="a trained detection run to use (default: train one, 1 epoch)")
    args = parser.parse_args()
    runs, data = isolate("predict")
    from aistudio.data.builtin import shapes_project

    cls_run = Path(args.cls_run) if args.cls_run else train(runs, "digits", ["trainer.max_epochs=1"])
    det_run = Path(args.det_run) if args.det_run else train(runs, "detector", [
        "task=detection", "data.project.num_images=48", "trainer.max_epochs=1"])
    cls_input = Path(json.loads((cls_run / "run.json").read_text())["dataset"]["file"])
    det_input = Path(shapes_project(data, "detection", num_images=args.det_images, image_size=128, seed=7)).parent / "images"
    cases = [("digits resnet18 (classification)", cls_run, cls_input),
             ("fasterrcnn_mobilenet_v3_large_320_fpn (detection)", det_run, det_input)]

    results = []
    for label, run_dir, source in cases:
        for round_ in range(1, args.rounds + 1):
            predicted = run_predict(run_dir, source, runs / f"out-{len(results)}")
            bare = run_bare(run_dir, source, predicted["batch_size"])
            rate = {"bare": bare["images"] / bare["seconds"], "serial": bare["images"] / bare["serial_seconds"],
                    "predict": predicted["images"] / predicted["seconds"]}
            results.append({"model": label, "round": round_, "images": predicted["images"],
                            "batch_size": predicted["batch_size"], "num_workers": predicted["num_workers"],
                            "bare_images_per_s": round(rate["bare"], 1),
                            "serial_images_per_s": round(rate["serial"], 1),
                            "predict_images_per_s": round(rate["predict"], 1),
                            "ratio": round(rate["predict"] / rate["bare"], 3),
                            "ratio_to_serial": round(rate["predict"] / rate["serial"], 3),
                            "predict_wall_s": predicted["wall_s"], "threads": bare["threads"]})
            print(f"{label} round {round_}: bare model(x) {rate['bare']:.1f}, serial decode+model {rate['serial']:.1f}, "
                  f"predict.py {rate['predict']:.1f} images/s", flush=True)
    device = f"CPU ({os.cpu_count()} cores)"
    print(json.dumps({"device": device, "target_ratio": TARGET_RATIO, "results": results}, indent=2))
    headers = ["model", "round", "images", "batch", "workers", "bare model(x) img/s", "serial decode+model img/s",
               "predict.py img/s", "predict/bare", "predict/serial", "predict.py wall s"]
    rows = [[r["model"], r["round"], r["images"], r["batch_size"], r["num_workers"], r["bare_images_per_s"],
             r["serial_images_per_s"], r["predict_images_per_s"], r["ratio"], r["ratio_to_serial"],
             r["predict_wall_s"]] for r in results]
    print("\n| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
    print("\n".join("| " + " | ".join(str(v) for v in row) + " |" for row in rows))
    print("\n" + table(headers, rows))
    for label, _, _ in cases:
        ratios = [r["ratio"] for r in results if r["model"] == label]
        middle = median(ratios)
        print(f"{label}: predict.py / bare model(x), median of {len(ratios)} rounds {middle:.3f}   "
              f"target >= {TARGET_RATIO}   [{'ok' if middle >= TARGET_RATIO else 'UNDER'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
