"""``python train.py resume=<run>``: rewrite the command line before Hydra composes the config.

A resumed run must train the configuration it was started with, so its recorded overrides are put
back in front of the ones given now (those win on the same key), and ``resume`` becomes the run's
directory, which the run-dir resolver then reuses. No heavy imports: this runs on every start.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aistudio import AistudioError
from aistudio.overrides import override_key
from aistudio.run_layout import LAST_CHECKPOINT, RUN_FILE, default_runs_root
from aistudio.runs.atomic import read_json
from aistudio.runs.catalog import find_run

# overrides that change what the checkpoint's weights fit: a resume cannot load them into another architecture
ARCHITECTURE_KEYS = ("model", "model.name", "model.num_classes", "model.anchor_sizes", "model.aspect_ratios",
                     "task", "task.name", "data.channels", "experiment")


def refuse_architecture_change(reference: str, run_dir: Path, stored: list[str], given: list[str]) -> None:
    """A resume keeps the run's model and task; changing them is a new run (from these weights)."""
    recorded = {override_key(o): o for o in stored}
    for override in given:
        key = override_key(override)
        if key in ARCHITECTURE_KEYS and recorded.get(key) != override:
            was = recorded[key] if key in recorded else f"{key} at its default"
            raise AistudioError(
                f"resume={reference}: {override} changes the model or task of the run being resumed (it was "
                f"trained with {was}), and its checkpoint cannot be loaded into another one — drop {key} to "
                f"resume, or start a new run from its weights: python train.py {override} "
                f"model.weights={run_dir}/{LAST_CHECKPOINT}")


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
    given_now = [a for a in args if "=" in a and not a.startswith("-") and not a.startswith("resume=")]
    refuse_architecture_change(reference, run_dir, stored, given_now)
    current = {override_key(a) for a in given_now}
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
