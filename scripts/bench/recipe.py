"""Time-to-target for a training recipe: run ``train.py <overrides>`` once, read its run directory.

Reports the wall time, the first epoch at which ``--metric`` reached ``--target`` and the wall-clock
time to get there (from metrics.json's per-epoch timestamps, measured from the process start), the
best and test metrics. For the task numbers of the issues, e.g.

    .venv/bin/python scripts/bench/recipe.py --metric val_miou --target 0.80 --budget 600 \
        experiment=shapes_segmentation hardware=cpu
    .venv/bin/python scripts/bench/recipe.py --metric val_map_50 --target 0.80 --budget 900 task=detection
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

from _common import REPO, isolate, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metric", required=True, help="a metrics.json key, e.g. val_miou")
    parser.add_argument("--target", type=float, required=True, help="value to reach (higher is better)")
    parser.add_argument("--budget", type=float, required=True, help="seconds allowed to reach it")
    parser.add_argument("--data-dir", help="reuse this AISTUDIO_DATA_DIR (default: a fresh temp dir)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to train.py")
    args = parser.parse_args()
    runs, _ = isolate("recipe", args.data_dir)
    run_dir = runs / "run"
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    with open(runs / "train.log", "w") as log:
        proc = subprocess.run([sys.executable, "train.py", *args.overrides, f"hydra.run.dir={run_dir}",
                               "callbacks.progress_bar.kind=none"], cwd=REPO, env=os.environ,
                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - clock
    record = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    epochs = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else []
    reached = next((e for e in epochs if (e.get(args.metric) or float("-inf")) >= args.target), None)
    to_target = ((datetime.fromisoformat(reached["time"]) - started).total_seconds() if reached else None)
    best = max((e.get(args.metric) or float("-inf") for e in epochs), default=None)
    print(f"python train.py {' '.join(args.overrides)}  (exit code {proc.returncode}, log {runs / 'train.log'})")
    print(table(["status", "epochs", "wall s", f"best {args.metric}", "reached at epoch", "time to target s"],
                [[record.get("status"), len(epochs), round(wall, 1), best,
                  reached["epoch"] if reached else "-", round(to_target, 1) if to_target else "-"]]))
    print("test metrics:", json.dumps(record.get("test_metrics", {}), indent=None))
    verdict = "ok" if to_target is not None and to_target <= args.budget else "NOT REACHED"
    print(f"target {args.metric} >= {args.target} within {args.budget:.0f} s: [{verdict}]")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
