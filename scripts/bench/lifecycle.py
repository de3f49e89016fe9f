"""Cost of the run-directory bookkeeping per epoch on the default run (issue: < 1% of epoch time).

Runs ``python train.py`` (the README's default job) once, takes its mean epoch time from
metrics.json, then replays the bookkeeping one epoch end does on copies of that run's own files:
metrics.json rewritten atomically (temp file + fsync + rename) and run.json updated atomically,
plus the heartbeat thread's share (one run.json write every ``heartbeat_s``).

    .venv/bin/python scripts/bench/lifecycle.py [--repeats 200] [--data-dir DIR] [-- overrides]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, isolate, median, table

sys.path.insert(0, str(REPO))

from aistudio.runs.atomic import atomic_write_json  # noqa: E402
from aistudio.runs.record import HEARTBEAT_INTERVAL_S, RunRecord  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--data-dir", help="reuse this AISTUDIO_DATA_DIR")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    runs, _ = isolate("lifecycle", args.data_dir)
    run_dir = runs / "default"
    subprocess.run([sys.executable, "train.py", *args.overrides, f"hydra.run.dir={run_dir}",
                    "callbacks.progress_bar.kind=none"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    epochs = json.loads((run_dir / "metrics.json").read_text())
    epoch_s = median([e["epoch_time_s"] for e in epochs])

    scratch = Path(tempfile.mkdtemp(prefix="aistudio-lifecycle-", dir=run_dir.parent))
    shutil.copy(run_dir / "run.json", scratch / "run.json")
    record = RunRecord(scratch, json.loads((run_dir / "run.json").read_text()))
    metrics_times, record_times = [], []
    for _ in range(args.repeats):
        clock = time.perf_counter()
        atomic_write_json(scratch / "metrics.json", epochs)  # the full list, as at the last epoch
        metrics_times.append(time.perf_counter() - clock)
        clock = time.perf_counter()
        record.update(epochs_completed=len(epochs), last_metrics=epochs[-1])
        record_times.append(time.perf_counter() - clock)
    metrics_s, record_s = median(metrics_times), median(record_times)
    heartbeat_s = record_s * epoch_s / HEARTBEAT_INTERVAL_S
    per_epoch = metrics_s + record_s + heartbeat_s
    print(f"default run: {len(epochs)} epochs, median epoch {epoch_s:.3f} s (run dir {run_dir})")
    print(table(["write", "median ms", "per epoch ms", "share of epoch"], [
        ["metrics.json (atomic)", metrics_s * 1e3, metrics_s * 1e3, f"{metrics_s / epoch_s:.4%}"],
        ["run.json (atomic)", record_s * 1e3, record_s * 1e3, f"{record_s / epoch_s:.4%}"],
        [f"heartbeat (every {HEARTBEAT_INTERVAL_S:.0f} s)", record_s * 1e3, heartbeat_s * 1e3,
         f"{heartbeat_s / epoch_s:.4%}"],
        ["total", "", per_epoch * 1e3, f"{per_epoch / epoch_s:.4%}"],
    ]))
    print(f"ratio bookkeeping/epoch = {per_epoch / epoch_s:.5f} (target < 0.01)")
    return 0 if per_epoch / epoch_s < 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
