"""``python train.py resume=<run>``: rewrite the command line before Hydra composes the config.

A resumed run must train the configuration it was started with, so its recorded overrides are put
back in front of the ones given now (those win on the same key), and ``resume`` becomes the run's
directory, which the run-dir resolver then reuses. No heavy imports: this runs on every start.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aistudio import AistudioError
from aistudio.runs.atomic import read_json
from aistudio.runs.catalog import default_runs_root, find_run
from aistudio.runs.record import RUN_FILE


def override_key(override: str) -> str:
    """``+a.b=1`` / ``~a.b`` / ``++a.b=1`` / ``a.b=1`` -> ``a.b``."""
    return override.lstrip("+~").split("=", 1)[0]


def expand_resume(argv: list[str]) -> list[str]:
    """``argv`` with the resumed run's own overrides restored (unchanged when there is no resume=)."""
    args = argv[1:]
    if any(a in ("-m", "--multirun") for a in args):
        return argv
    given = [a for a in args if a.startswith("resume=")]
    if not given or given[-1] in ("resume=", "resume=null", "resume=None"):
        return argv
    reference = given[-1].split("=", 1)[1]
    root = next((Path(a.split("=", 1)[1]) for a in args if a.startswith("paths.runs_root=")), default_runs_root())
    run_dir = find_run(reference, root)
    stored = (read_json(run_dir / RUN_FILE) or {}).get("overrides") or []
    current = {override_key(a) for a in args if "=" in a and not a.startswith("-")}
    restored = [o for o in stored if override_key(o) not in current and override_key(o) != "resume"]
    target = reference if reference.endswith(".ckpt") and Path(reference).is_file() else str(run_dir)
    rest = [a for a in args if not a.startswith("resume=")]
    return [argv[0], *restored, *rest, f"resume={target}"]


def apply_to_sys_argv() -> None:
    """Rewrite ``sys.argv`` in place; a reference that matches no run is one clear error."""
    try:
        sys.argv = expand_resume(sys.argv)
    except AistudioError as err:
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(1)
