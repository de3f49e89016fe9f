"""Command lines of the entry points that use a trained run (``eval.py``, ``predict.py``, ``export.py``).

Their own keys (``run``, ``ckpt``, ``split``...) are in their config; every other ``key=value`` changes
the run's frozen config.json for that command only. Hydra refuses a key its composed config lacks, so
before Hydra composes, such overrides are marked as additions (``+data.split_index=3``); the task
function takes them back (:func:`run_overrides`). A user's own ``+key=value`` (a key config.json
lacks) travels as ``++`` so the two stay apart. No heavy imports.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from aistudio import AistudioError
from aistudio.overrides import override_key
from aistudio.runs.catalog import find_run

CONF = Path(__file__).resolve().parents[2] / "conf"
HYDRA_VALUE_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                     "--package", "-p", "--info", "-i", "--experimental-rerun")


def mark_run_overrides(argv: list[str], own_keys: tuple[str, ...]) -> list[str]:
    """``argv`` with overrides of the run's config marked for Hydra (see the module docstring)."""
    marked, after_flag = [argv[0]], False
    for arg in argv[1:]:
        key = override_key(arg)
        if after_flag or arg.startswith("-") or "=" not in arg or key.split(".")[0] in (*own_keys, "hydra"):
            marked.append(arg)
        elif arg.startswith("~"):
            raise AistudioError(f"{arg}: removing a key of the run's config is not supported — set it instead")
        elif "." not in key and (CONF / key).is_dir():
            raise AistudioError(f"{arg}: the run's own {key} config is used as it trained — change single "
                                f"keys instead (e.g. {key}.<key>=<value>; the run's config.json lists them)")
        else:
            marked.append(arg if arg.startswith("++") else "+" + arg)  # a user's +key (or ++key) -> ++key
        after_flag = arg in HYDRA_VALUE_FLAGS
    return marked


def run_overrides(task_overrides: list[str], own_keys: tuple[str, ...]) -> list[str]:
    """The overrides of the run's config, as the user wrote them, from Hydra's task overrides."""
    overrides = []
    for override in task_overrides:
        if override_key(override).split(".")[0] in own_keys:
            continue
        overrides.append(override[1:] if override.startswith("++") else override.removeprefix("+"))
    return overrides


def apply_to_sys_argv(own_keys: tuple[str, ...]) -> None:
    try:
        sys.argv[:] = mark_run_overrides(sys.argv, own_keys)
    except AistudioError as err:
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(1)


def run_subdir(run: str, root: str | None, name: str) -> str:
    """``hydra.run.dir`` of these entry points: a folder in the run (``eval``, ``export``: their log goes
    there), or a temporary folder while the run cannot be found (the task function then reports it)."""
    try:
        return str(find_run(str(run), root or None, latest_of=("completed",)) / name)
    except AistudioError:
        return str(Path(tempfile.gettempdir()) / f"aistudio-{name}")


def register_run_subdir_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("aistudio_run_subdir"):
        OmegaConf.register_new_resolver("aistudio_run_subdir", run_subdir)


def report_user_error(err: Exception) -> None:
    """Print the :class:`AistudioError` behind ``err`` as one line and exit 1 (anything else propagates)."""
    from aistudio import user_error

    problem = user_error(err)
    if problem is None:
        raise err
    print(f"\nError: {problem}", file=sys.stderr)
    sys.exit(1)
