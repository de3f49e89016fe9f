"""``aistudio runs``: list, show, compare, resume, retry and remove runs under a runs root.

Statuses are shown as readers must see them: a pending/running run whose process is gone (or whose
heartbeat is overdue) is ``interrupted``. Resume and retry start ``train.py`` again the way the run
was started (its recorded script and working directory), with ``resume=<run dir>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aistudio import AistudioError
from aistudio.overrides import override_key
from aistudio.run_layout import default_runs_root
from aistudio.runs.catalog import find_run, load_runs
from aistudio.runs.record import effective_status, load_run, stale_reason


def _duration(data: dict[str, Any]) -> str:
    seconds = data.get("duration_s")
    if seconds is None and data.get("started_at"):
        seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(data["started_at"])).total_seconds()
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _best(data: dict[str, Any]) -> str:
    best = data.get("best") or {}
    if best.get("value") is None:
        return "-"
    return f"{best.get('metric')}={best['value']:.4g} (ep {best.get('epoch')})"


def summary_rows(root: Path, display: bool = True) -> list[dict[str, Any]]:
    """One row per run; ``display=False`` keeps ``best`` as run.json's object (for --json)."""
    rows = []
    for folder, data in load_runs(root):
        rows.append({"id": data.get("id", folder.name), "status": effective_status(data),
                     "task": data.get("task") or "-", "model": data.get("model") or "-",
                     "epochs": data.get("epochs_completed", 0), "best": _best(data) if display else data.get("best"),
                     "duration": _duration(data), "attempt": data.get("attempt", 1),
                     "dir": os.path.relpath(folder)})
    return rows


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


def _list(args: argparse.Namespace) -> None:
    if not Path(args.root).is_dir():
        raise AistudioError(f"no runs folder at {Path(args.root).resolve()} — runs are written under "
                            "$AISTUDIO_RUNS_DIR, else ./runs of the folder train.py ran in: cd there or pass --root DIR")
    rows = summary_rows(args.root, display=not args.json)
    if args.status:
        rows = [r for r in rows if r["status"] == args.status]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no runs under {Path(args.root).resolve()}" + (f" with status {args.status}" if args.status else "")
              + (" (the runs root: --root DIR, or $AISTUDIO_RUNS_DIR, else ./runs of the folder train.py ran in)"
                 if not args.status else ""))
        return
    _print_table(rows, ["id", "status", "task", "model", "epochs", "best", "duration", "attempt", "dir"])


def _show(args: argparse.Namespace) -> None:
    folder = find_run(args.run, args.root)
    data = load_run(folder)
    reason = stale_reason(data)
    if reason:
        data = {**data, "status": "interrupted", "stale": reason, "recorded_status": data.get("status")}
    if args.json:
        print(json.dumps(data, indent=2))
        return
    print(f"run {data.get('id')}  {data['status']}  (attempt {data.get('attempt', 1)})")
    print(f"  directory  {folder}")
    print(f"  command    {data.get('command')}")
    print(f"  task/model {data.get('task')} / {data.get('model')}")
    print(f"  epochs     {data.get('epochs_completed', 0)}   best {_best(data)}   duration {_duration(data)}")
    if reason:
        print(f"  stale      {reason}")
    if data.get("test_metrics"):
        print("  test       " + " ".join(f"{k}={v:.4g}" for k, v in sorted(data["test_metrics"].items())
                                     if isinstance(v, (int, float))))
    error = data.get("error") or {}
    if error:
        print(f"  error      {error.get('type')}: {error.get('message')}")
    for past in data.get("history") or []:
        past_error = (past.get("error") or {}).get("message")
        print(f"  attempt {past.get('attempt')}: {past.get('status')}" + (f" — {past_error}" if past_error else ""))


def _override_values(data: dict[str, Any]) -> dict[str, str]:
    """run.json's ``overrides`` as key -> value (``~key``, a deletion, reads ``~``)."""
    return {override_key(o): o.split("=", 1)[1] if "=" in o else "~" for o in data.get("overrides") or []}


def compare_runs(runs: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """Side by side: the overrides whose values differ (``-``: not overridden in that run), the best epoch
    (metric, value, epoch) and the test metrics (the union of names; ``None`` where a run lacks one)."""
    overrides = [_override_values(data) for _, data in runs]
    keys = list(dict.fromkeys(k for values in overrides for k in values))
    differing = {k: [values.get(k, "-") for values in overrides] for k in keys
                 if len({values.get(k, "-") for values in overrides}) > 1}
    tests = [data.get("test_metrics") or {} for _, data in runs]
    return {"runs": [{"id": data.get("id", folder.name), "dir": str(folder), "status": effective_status(data)}
                     for folder, data in runs],
            "overrides": differing,
            "best": {field: [(data.get("best") or {}).get(field) for _, data in runs]
                     for field in ("metric", "value", "epoch")},
            "test_metrics": {name: [t.get(name) for t in tests]
                             for name in sorted(dict.fromkeys(n for t in tests for n in t))}}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _compare(args: argparse.Namespace) -> None:
    if len(args.runs) < 2:
        raise AistudioError(f"runs compare needs at least 2 runs, got {len(args.runs)} — name them by id, "
                            "unique id prefix or directory (aistudio runs list shows them)")
    folders = list(dict.fromkeys(find_run(r, args.root) for r in args.runs))
    if len(folders) < 2:
        raise AistudioError(f"runs compare needs 2 different runs: {', '.join(args.runs)} are all {folders[0]}")
    table = compare_runs([(folder, load_run(folder)) for folder in folders])
    if args.json:
        print(json.dumps(table, indent=2))
        return
    rows = [["", *(r["id"] for r in table["runs"])], ["status", *(r["status"] for r in table["runs"])]]
    sections = [("overrides (differing)", table["overrides"]),
                ("best", table["best"]), ("test", table["test_metrics"])]
    for title, section in sections:
        rows.append([title + ("" if section else ": none"), *([""] * len(folders))])
        rows += [[f"  {name}", *(_cell(v) for v in values)] for name, values in section.items()]
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _train_command(folder: Path, extra: list[str]) -> tuple[list[str], str]:
    data = load_run(folder)
    argv = data.get("argv") or []
    script = argv[0] if argv else "train.py"
    cwd = data.get("cwd") or os.getcwd()
    if not (Path(cwd) / script).is_file():
        raise AistudioError(f"cannot find {script} in {cwd} (where run {data.get('id')} was started) — run "
                            f"python train.py resume={folder} from the project's folder instead")
    return [sys.executable, script, f"resume={folder}", *extra], cwd


def _restart(args: argparse.Namespace, allowed: tuple[str, ...], verb: str) -> int:
    if args.run and "=" in args.run:  # `aistudio runs resume trainer.max_epochs=30`: no run named, latest
        args.overrides, args.run = [args.run, *args.overrides], None
    folder = find_run(args.run or "latest", args.root, latest_of=allowed)
    status = effective_status(load_run(folder))
    if status not in allowed:
        hint = (f"; start a new run from its weights with model.weights={folder}/checkpoints/best.ckpt"
                if status == "completed" else "")
        raise AistudioError(f"cannot {verb} run {folder.name}: it is {status} (only {', '.join(allowed)} "
                            f"runs){hint}")
    command, cwd = _train_command(folder, args.overrides)
    print(f"{verb}: {' '.join(command)}  (in {cwd})", flush=True)
    return subprocess.call(command, cwd=cwd)


def _remove(args: argparse.Namespace) -> None:
    targets = [find_run(r, args.root) for r in args.runs]
    if args.failed:
        targets += [d for d, data in load_runs(args.root) if effective_status(data) == "failed"]
    if not targets:
        raise AistudioError("nothing to remove: name runs or pass --failed")
    for folder in dict.fromkeys(targets):
        status = effective_status(load_run(folder))
        if status in ("pending", "running"):
            raise AistudioError(f"run {folder.name} is {status}: stop it first")
        if status in ("completed", "interrupted") and not args.force:
            raise AistudioError(f"run {folder.name} is {status}: pass --force to remove it anyway")
        shutil.rmtree(folder)
        print(f"removed {folder}")


def add_runs_parser(commands: Any) -> None:
    runs = commands.add_parser("runs", help="list, show, compare, resume, retry and remove training runs")
    runs.add_argument("--root", type=Path, default=default_runs_root(),
                      help="runs root (default: $AISTUDIO_RUNS_DIR or ./runs)")
    actions = runs.add_subparsers(dest="action", required=True)
    root_after = argparse.ArgumentParser(add_help=False)  # `runs list --root X` works as `runs --root X list`
    root_after.add_argument("--root", type=Path, default=argparse.SUPPRESS, help="runs root")
    listing = actions.add_parser("list", help="one line per run (stale runs shown interrupted)", parents=[root_after])
    listing.add_argument("--status", choices=["pending", "running", "completed", "failed", "interrupted"])
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_list)
    show = actions.add_parser("show", help="one run in detail, with its attempts", parents=[root_after])
    show.add_argument("run", help="run id (or a unique prefix), run directory or latest")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_show)
    compare = actions.add_parser("compare", help="runs side by side: differing overrides, best epoch, test metrics",
                                 parents=[root_after])
    compare.add_argument("runs", nargs="*", help="2 or more run ids (or unique prefixes) or run directories")
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(func=_compare)
    resume = actions.add_parser("resume", help="continue an interrupted run from its last.ckpt", parents=[root_after])
    resume.add_argument("run", nargs="?", help="run id or directory (default: the latest interrupted run)")
    resume.add_argument("overrides", nargs="*", help="extra overrides, e.g. trainer.max_epochs=30")
    resume.set_defaults(func=lambda a: _restart(a, ("interrupted",), "resume"))
    retry = actions.add_parser("retry", help="run a failed or interrupted run again in its directory", parents=[root_after])
    retry.add_argument("run", nargs="?", help="run id or directory (default: the latest stopped run)")
    retry.add_argument("overrides", nargs="*", help="overrides that fix the failure, e.g. optimizer.lr=0.01")
    retry.set_defaults(func=lambda a: _restart(a, ("failed", "interrupted"), "retry"))
    remove = actions.add_parser("remove", help="delete failed runs (others need --force)", parents=[root_after])
    remove.add_argument("runs", nargs="*", help="run ids or directories")
    remove.add_argument("--failed", action="store_true", help="every failed run under the root")
    remove.add_argument("--force", action="store_true", help="also completed and interrupted runs")
    remove.set_defaults(func=_remove)


