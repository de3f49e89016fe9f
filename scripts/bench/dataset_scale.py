"""Dataset scale (issue 14): validating a 100k-image project, the 1M-entry listing, and training memory.

Targets on 2 cores: the first validation of 100k images (headers opened) < 60 s, the second (served
by the check cache) < 5 s, loading a 1M-entry dataset.json with ``check_images=off`` < 30 s, and the
peak memory of a short training run (main process + DataLoader workers) growing < 10 % from 1k to
100k images. Each figure is a fresh process timed from outside (what a user pays), on projects
written by ``aistudio synthetic`` into a temp folder.

The training runs are train.py's defaults (resnet18, DataLoader workers on) for 20 + 5 batches at
``data.image_size=64`` (smaller activations make the records' share larger, so the check is stricter
than at 224; extra overrides after the options, e.g. ``data.image_size=224``, win).

    .venv/bin/python scripts/bench/dataset_scale.py [--images 100000] [--entries 1000000] [--json PATH]
    .venv/bin/python scripts/bench/dataset_scale.py --images 2000 --entries 20000   # about a minute
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

from _common import REPO, PeakRss, isolate, median

FIRST_TARGET_S = 60.0
CACHED_TARGET_S = 5.0
LISTING_TARGET_S = 30.0
MEMORY_GROWTH_TARGET = 0.10
TRAIN_SMALL = 1_000
TRAIN_DEFAULTS = ["data.image_size=64"]
LOAD = ("import sys, time; from aistudio.data.project import load_project; t = time.perf_counter(); "
        "p = load_project(sys.argv[1], check_images=sys.argv[2]); "
        "print(len(p.images), time.perf_counter() - t)")


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds, output) of one fresh ``python <argv>`` process; exits loudly if it fails."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"python {' '.join(argv)} ended with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def synthetic(folder: Path, images: int, *extra: str) -> float:
    """Seconds ``aistudio synthetic`` takes to write the project."""
    wall, _ = timed(["-m", "aistudio.cli.main", "synthetic", str(folder), "--images", str(images), *extra],
                    dict(os.environ))
    return wall


def how_checked(output: str) -> str:
    """What a validation's log says about the checks: how they ran, how many came from the cache."""
    said = [line.split(": ", 1)[-1] for line in output.splitlines()
            if " image checks from the check cache" in line or (": checking " in line and " images (" in line)]
    return "; ".join(s.split(" (/")[0].replace(" image checks from the check cache", " from the cache") for s in said)


def train_peak(project: Path, runs: Path, name: str, overrides: list[str]) -> dict[str, Any]:
    """Peak memory (MB: summed RSS of the main process and its DataLoader workers, and the main process's
    own) and wall time of a short train.py run on ``project``."""
    argv = [sys.executable, "train.py", "data=project", f"data.project={project}", "trainer.max_epochs=1",
            "trainer.limit_train_batches=20", "trainer.limit_val_batches=5", "test=false", "plots=false",
            "callbacks.progress_bar.kind=none", f"hydra.run.dir={runs / name}", *TRAIN_DEFAULTS, *overrides]
    log_path = runs / f"{name}.log"
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        with PeakRss(proc.pid, interval_s=0.1) as rss:
            code = proc.wait()
        wall = time.perf_counter() - start
    if code != 0:
        sys.exit(f"train.py on {project} ended with {code}:\n" + log_path.read_text(errors="replace")[-3000:])
    return {"wall_s": wall, "peak_rss_mb": rss.peak_total_mb, "peak_main_mb": rss.peak_main_mb,
            "main_hwm_mb": rss.main_hwm_mb, "processes": rss.peak_processes}


def markdown(headers: list[str], rows: list[list[object]]) -> str:
    """A markdown table; seconds with one decimal."""
    def cell(value: object) -> str:
        return f"{value:.1f} s" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def verdict(ok: bool) -> str:
    return "ok" if ok else "OVER"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000, help="images of the validated project")
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries of the listing-only project")
    parser.add_argument("--no-train", action="store_true", help="skip the training runs (memory)")
    parser.add_argument("--repeat", type=int, default=1, help="training runs per project (median peak reported)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (e.g. hardware=gpu)")
    args = parser.parse_args()
    runs, data = isolate("dataset-scale")
    env = dict(os.environ, AISTUDIO_CACHE_DIR=str(data / "checks"))
    os.environ["AISTUDIO_CACHE_DIR"] = env["AISTUDIO_CACHE_DIR"]  # training runs use (and fill) it too
    results: dict[str, Any] = {"images": args.images, "entries": args.entries, "cores": len(os.sched_getaffinity(0))}
    rows: list[list[object]] = []

    big = data / f"synthetic-{args.images}"
    results["generate_s"] = synthetic(big, args.images)
    print(f"aistudio synthetic: {args.images} images in {results['generate_s']:.1f} s", flush=True)
    rows.append([f"write {args.images} images (aistudio synthetic)", results["generate_s"], "", "", ""])
    for key, label, target in (("first_s", "first (no check cache)", FIRST_TARGET_S),
                               ("cached_s", "second (check cache)", CACHED_TARGET_S)):
        wall, output = timed(["-m", "aistudio.cli.main", "validate", str(big)], env)
        results[key], results[f"{key[:-2]}_how"] = wall, how_checked(output)
        rows.append([f"aistudio validate, {args.images} images, {label}", wall, f"< {target:g}",
                     verdict(wall < target), results[f"{key[:-2]}_how"]])
        print(f"  {label}: {wall:.1f} s", flush=True)

    listing = data / f"listing-{args.entries}"
    results["listing_generate_s"] = synthetic(listing, args.entries, "--no-files")
    wall, output = timed(["-c", LOAD, str(listing), "off"], env)
    results["listing_s"], results["listing_load_s"] = wall, float(output.split()[1])
    rows.append([f"load {args.entries} entries, check_images=off", wall, f"< {LISTING_TARGET_S:g}",
                 verdict(wall < LISTING_TARGET_S), f"load_project {results['listing_load_s']:.1f} s"])
    print(f"  {args.entries}-entry listing: {wall:.1f} s", flush=True)

    if not args.no_train:
        small = data / f"synthetic-{TRAIN_SMALL}"
        synthetic(small, TRAIN_SMALL)
        results["train_small"], results["train_big"] = [], []
        for i in range(args.repeat):  # alternated, so that a drift of the machine hits both sizes
            for key, project in (("train_small", small), ("train_big", big)):
                results[key].append(train_peak(project, runs, f"{key}-{i}", args.overrides))
                print(f"  training on {project.name}: peak RSS {results[key][-1]['peak_rss_mb']:.0f} MB", flush=True)
        processes = results["train_big"][0]["processes"]
        for key, label, target in (("peak_rss_mb", f"main + {processes - 1} workers", MEMORY_GROWTH_TARGET),
                                   ("peak_main_mb", "main process alone", None)):
            before = median([r[key] for r in results["train_small"]])
            after = median([r[key] for r in results["train_big"]])
            results[f"{key[:-3]}_growth"] = growth = after / before - 1
            rows.append([f"training peak RSS ({label}), {TRAIN_SMALL} -> {args.images} images",
                         f"{before:.0f} -> {after:.0f} MB ({growth:+.1%})", f"< {target:.0%}" if target else "(info)",
                         verdict(growth < target) if target else "", ""])

    print(f"\nDataset scale, {results['cores']} cores (seconds: wall time of fresh processes)\n")
    print(markdown(["measure", "value", "target", "", "note"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
