"""Command start -> first training step of the default run (``python train.py``, digits already
materialised: that is a one-off and not timed). Target: < 8 s.

Each run is a fresh ``python train.py`` process in a fresh runs dir (the data dir is shared); the
benchmark stamps the time just before starting it, waits for the first ``train batch`` line in the run's
logs/training.log (``callbacks.progress_bar.kind=log interval_s=0`` make every step log one; the time
stamped on the line counts), then stops the run with SIGTERM to its process group. Where the time went
comes from the stamps of the log lines the run writes anyway (median over the runs of each phase):

    start -> "dataset ..."        interpreter, Hydra, config, dataset validation (no torch yet)
          -> "run directory: ..."  torch/Lightning/torchvision imports (the config's type check), run.json
          -> "GPU available: ..."  datamodule, model build, Trainer
          -> "Loading `train_dataloader` ..."  fit setup: optimizer and scheduler (which sizes the epoch)
          -> first "train batch"   sanity check (2 val batches), train DataLoader workers, the first step

A phase whose line is missing (another scheduler, a resumed run) folds into the next. "imports alone"
is ``python -c "import lightning.pytorch, torchvision, albumentations, cv2"`` in a fresh process, up to
the imports being done: the floor of the first two phases.

    .venv/bin/python scripts/bench/first_step.py [--runs 5] [--data-dir DIR] [--json PATH] [-- overrides]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, first_step_at, isolate, log_lines, median, table

TARGET_S = 8.0
LOG_EVERY_STEP = ["callbacks.progress_bar.kind=log", "callbacks.progress_bar.interval_s=0"]
PHASES = [  # (text of the line that ends the phase, what the phase is)
    ("dataset ", "interpreter, Hydra, config, dataset validation"),
    ("run directory: ", "torch/Lightning imports (config type check), run.json"),
    ("GPU available: ", "datamodule, model build, Trainer"),
    ("`train_dataloader` to estimate", "fit setup: optimizer, scheduler"),
    ("train batch ", "sanity check (2 val batches), train workers, first step"),
]
IMPORTS = "import lightning.pytorch, torchvision, albumentations, cv2"


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the run's process group (as a terminal's Ctrl-C reaches all of it; the run saves
    last.ckpt and ends its workers), SIGKILL after 60 s; returns once every process of the group is gone,
    so that the next measurement does not share the cores with this one's exit."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # a DataLoader worker of the group still exiting
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)


def one_run(index: int, runs_root: Path, env: dict[str, str], overrides: list[str]) -> dict[str, Any]:
    runs = Path(tempfile.mkdtemp(prefix=f"run{index}-", dir=runs_root))
    output = runs_root / f"train-{index}.out"
    with open(output, "w") as out:
        start = time.time()
        process = subprocess.Popen([sys.executable, "train.py", *LOG_EVERY_STEP, *overrides], cwd=REPO,
                                   env={**env, "AISTUDIO_RUNS_DIR": str(runs)}, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not (dirs := [p.parent.parent for p in runs.glob("*/logs/training.log")]):
                if process.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"run {index}: train.py ended ({process.returncode}) without a run directory:\n"
                             + output.read_text(errors="replace")[-3000:])
                time.sleep(0.05)
            first = first_step_at(dirs[0], deadline) - start
        finally:
            stop_group(process)
    phases: dict[str, float] = {}
    previous = start
    lines = log_lines(dirs[0] / "logs" / "training.log")
    for text, label in PHASES:
        stamp = next((s for s, message in lines if text in message), None)
        if stamp is not None:
            phases[label] = stamp - previous
            previous = stamp
    return {"first_step_s": first, "phases_s": phases}


def imports_alone(env: dict[str, str]) -> float:
    """Interpreter start -> the heavy imports done, in a fresh process (its exit, ~1 s of torch teardown,
    is not counted: a run does not exit before its first step)."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", f"{IMPORTS}; print('imported', flush=True)"], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "imported"
    elapsed = time.perf_counter() - start
    process.wait()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="train.py processes to start (median reported)")
    parser.add_argument("--data-dir", help="reuse this AISTUDIO_DATA_DIR (default: a fresh temp dir)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to train.py")
    args = parser.parse_args()
    runs_root, data_dir = isolate("first-step", args.data_dir)
    env = {**os.environ, "AISTUDIO_LOCK_DIR": str(runs_root.parent / "locks"), "PYTHONUNBUFFERED": "1"}

    sys.path.insert(0, str(REPO))
    from aistudio.data.builtin import digits_project

    start = time.perf_counter()
    digits_project(data_dir)  # the one-off materialising, not timed (instant when already there)
    print(f"digits in {data_dir} ({time.perf_counter() - start:.1f} s to materialise or find); "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    subprocess.run([sys.executable, "-c", IMPORTS], cwd=REPO, env=env, check=True)  # warm .pyc and page cache
    results, imports = [], []
    for index in range(1, args.runs + 1):
        results.append(one_run(index, runs_root, env, args.overrides))
        imports.append(imports_alone(env))
        print(f"  run {index}: first step after {results[-1]['first_step_s']:.2f} s "
              f"(imports alone {imports[-1]:.2f} s)", flush=True)

    firsts = [r["first_step_s"] for r in results]
    value = median(firsts)
    rows: list[list[object]] = [
        ["start -> first training step", f"{value:.2f}", f"{min(firsts):.2f}", f"{max(firsts):.2f}",
         f"< {TARGET_S:.0f}", "ok" if value < TARGET_S else "OVER"]]
    for _, label in PHASES:
        values = [r["phases_s"][label] for r in results if label in r["phases_s"]]
        if values:
            rows.append([f"  {label}", f"{median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}", "", ""])
    rows.append([f"({IMPORTS.removeprefix('import ')}: imports alone)", f"{median(imports):.2f}",
                 f"{min(imports):.2f}", f"{max(imports):.2f}", "", ""])
    print(f"\npython train.py {' '.join(args.overrides)}: start -> first step, seconds (median of {args.runs}; "
          f"phases from the run's log stamps)\n")
    print(table(["measure", "median s", "min s", "max s", "target", ""], rows))
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    if args.json:
        Path(args.json).write_text(json.dumps({"target_s": TARGET_S, "runs": results, "imports_alone_s": imports,
                                               "median_s": value, "cores": os.cpu_count()}, indent=2))
        print(f"wrote {args.json}")
    return 0 if value < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
