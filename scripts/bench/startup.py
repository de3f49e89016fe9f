"""Start-up latency of train.py: ``--help`` and ``--cfg job`` should answer in < 1.0 s, and a broken
dataset.json must be reported in < 2 s (it is validated before the heavy imports).

They can only be that fast if composing the config (and validating the dataset) imports no torch /
lightning / torchvision, so the script also checks that with ``python -X importtime`` (the imports the
real process made, not a guess).

    .venv/bin/python scripts/bench/startup.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, isolate, median, table

TARGET_S = 1.0
BAD_DATASET_TARGET_S = 2.0
FORBIDDEN = ("torch", "lightning", "torchvision")  # must not be imported to compose a config
ALSO_HEAVY = ("pytorch_lightning", "torchmetrics", "albumentations", "cv2", "sklearn", "tensorboard")
COMMANDS = {"train.py --help": ["train.py", "--help"], "train.py --cfg job": ["train.py", "--cfg", "job"]}


def wall_time(argv: list[str], expect: int = 0, says: str = "") -> float:
    """Seconds for one ``python <argv>`` subprocess (interpreter start to exit), failing loudly when it does
    not end with exit code ``expect`` and ``says`` on stderr."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != expect or says not in proc.stderr:
        sys.exit(f"python {' '.join(argv)} ended with {proc.returncode}:\n{proc.stderr[-2000:]}")
    return elapsed


def broken_dataset_command(root: Path) -> list[str]:
    """``train.py`` on a project whose dataset.json has a syntax error (a fresh run directory each time)."""
    project = root / "broken"
    project.mkdir(parents=True, exist_ok=True)
    (project / "dataset.json").write_text('{"version": 1, "classes": ["a"], "images": [}')
    return ["train.py", "data=project", f"data.project={project}", f"hydra.run.dir={root}/run-${{now:%H%M%S%f}}"]


def imported_modules(argv: list[str]) -> tuple[set[str], list[tuple[float, str]]]:
    """Top-level packages imported by ``python -X importtime <argv>`` and the 5 slowest top-level imports."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=REPO, capture_output=True, text=True)
    tops: set[str] = set()
    slowest: list[tuple[float, str]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        tops.add(name.strip().split(".")[0])
        if not name[1:].startswith(" "):  # one space after '|' = imported by the script itself
            slowest.append((int(cumulative) / 1e6, name.strip()))
    return tops, sorted(slowest, reverse=True)[:5]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per command (median reported)")
    args = parser.parse_args()
    runs, _ = isolate("startup")  # --help / --cfg job write nothing, but never risk the repo's runs/

    rows = []
    floor = [wall_time(["-c", "pass"]) for _ in range(args.repeat)]
    rows.append(["python -c pass (floor)", median(floor), min(floor), max(floor), "", ""])
    for label, argv in COMMANDS.items():
        wall_time(argv)  # warm-up: .pyc files and the OS page cache, as on any second invocation
        times = [wall_time(argv) for _ in range(args.repeat)]
        ok = "ok" if median(times) < TARGET_S else "OVER"
        rows.append([label, median(times), min(times), max(times), f"< {TARGET_S}", ok])
    broken = broken_dataset_command(runs)
    wall_time(broken, expect=1, says="dataset.json")
    times = [wall_time(broken, expect=1, says="dataset.json") for _ in range(args.repeat)]
    ok = "ok" if median(times) < BAD_DATASET_TARGET_S else "OVER"
    rows.append(["train.py, broken dataset.json", median(times), min(times), max(times),
                 f"< {BAD_DATASET_TARGET_S}", ok])
    print(f"\nStart-up wall time, seconds (median of {args.repeat}, after one warm-up run)\n")
    print(table(["command", "median s", "min s", "max s", "target", ""], rows))

    failed = False
    print("\nHeavy imports (python -X importtime)\n")
    check_rows = []
    for label, argv in {**COMMANDS, "train.py, broken dataset.json": broken}.items():
        tops, slowest = imported_modules(argv)
        bad = [m for m in FORBIDDEN if m in tops]
        other = [m for m in ALSO_HEAVY if m in tops]
        failed |= bool(bad)
        check_rows.append([label, ", ".join(bad) or "none", ", ".join(other) or "none",
                           "ok" if not bad else "FAIL",
                           ", ".join(f"{n} {s:.2f}s" for s, n in slowest[:3])])
    print(table(["command", f"{'/'.join(FORBIDDEN)} imported", "other heavy", "", "slowest imports"], check_rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
