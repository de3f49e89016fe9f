"""Sweep overhead and SLURM start-up (issue: sweeps and scale-out).

1. A 4-job basic sweep (``python train.py -m optimizer.lr=a,b,c,d``) of a tiny run against the same
   4 runs as separate ``python train.py`` processes: wall-time ratio sweep / separate (same machine,
   same run, alternating order to share any drift).
2. With a SLURM cluster reachable (``scripts/slurm/cluster.sh up``; SLURM_CONF set), one job through
   ``hydra/launcher=slurm``: seconds from launching the sweep to the job starting (sacct) and to
   training starting (run.json ``started_at``, written just before ``trainer.fit``).

    .venv/bin/python scripts/bench/sweep.py [--epochs 1] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import REPO, isolate, table

LRS = ["0.1", "0.05", "0.02", "0.01"]


def train(args: list[str]) -> float:
    clock = time.perf_counter()
    subprocess.run([sys.executable, "train.py", *args, "callbacks.progress_bar.kind=none"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - clock


def slurm_start(runs: Path, base: list[str]) -> list[list[object]] | None:
    if not os.environ.get("SLURM_CONF") or not shutil.which("sacct"):
        return None
    sweep = runs / "slurm"
    launched = datetime.now(timezone.utc)
    train(["-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", *base,
           "optimizer.lr=0.05", f"hydra.sweep.dir={sweep}"])
    run = json.loads((sweep / "0" / "run.json").read_text())
    job = run["slurm"]["job_id"]
    start = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "Start"], capture_output=True, text=True,
                           check=True).stdout.split()[0]
    job_start = datetime.fromisoformat(start).astimezone(timezone.utc)  # SLURM prints local time
    fit_start = datetime.fromisoformat(run["started_at"])
    return [["submit -> job running (sacct Start)", round((job_start - launched).total_seconds(), 1)],
            ["submit -> training starts (run.json started_at)", round((fit_start - launched).total_seconds(), 1)]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data-dir", help="reuse this AISTUDIO_DATA_DIR")
    args = parser.parse_args()
    runs, _ = isolate("sweep", args.data_dir)
    base = ["hardware=cpu", "model=mobilenet_v3_small", "data.image_size=32", f"trainer.max_epochs={args.epochs}",
            "test=false"]
    train([*base, f"hydra.run.dir={runs / 'warm-up'}"])  # materialise the digits, warm the file cache
    sweep_s = train(["-m", *base, f"optimizer.lr={','.join(LRS)}", f"hydra.sweep.dir={runs / 'sweep'}"])
    separate_s = sum(train([*base, f"optimizer.lr={lr}", f"hydra.run.dir={runs / f'single-{lr}'}"]) for lr in LRS)
    print(table(["4 jobs", "wall s"], [["one sweep (-m)", round(sweep_s, 1)],
                                       ["4 separate train.py", round(separate_s, 1)]]))
    print(f"ratio sweep/separate = {sweep_s / separate_s:.3f}")
    started = slurm_start(runs, base)
    if started is None:
        print("SLURM: no cluster reachable (scripts/slurm/cluster.sh up; export SLURM_CONF=...), skipped")
    else:
        print(table(["SLURM, one job", "s"], started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
