"""A Hydra callback that keeps ``sweep.json`` at the root of every multirun and ranks the jobs at the end.

It works with any sweeper (basic, Optuna) and launcher (in-process, joblib workers, SLURM nodes):
every job adds its own entry when it ends (under an flock on the sweep folder, since jobs may end at
the same moment on different processes), taking the facts from its run.json. The summary fields
(``status``, ``failed_jobs``, ``best_job``, and the cross-validation / repeated-seed ``aggregate`` of
:mod:`aistudio.sweeps.aggregate`) are computed from the entries by :func:`summarize` in the same write
as any change to an entry, so they never contradict them. At the end the jobs are ranked by their
objective, printed as a table followed by the aggregates (mean ± std per group of folds or seeds), and
a sweep with a failed job exits non-zero.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aistudio.run_layout import METRICS_FILE, RUN_FILE
from aistudio.runs.atomic import atomic_write_json, read_json
from aistudio.runs.record import effective_status, utc_now
from aistudio.sweeps.aggregate import aggregate, aggregate_lines, best_epoch_metrics

log = logging.getLogger("aistudio.sweep")

SWEEP_FILE = "sweep.json"


@contextmanager
def _sweep_lock(sweep_dir: Path) -> Iterator[None]:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep_dir / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def update_sweep(sweep_dir: Path, change: Any) -> dict[str, Any]:
    """Read-modify-write sweep.json atomically under the sweep lock; returns the new content."""
    with _sweep_lock(sweep_dir):
        data = read_json(sweep_dir / SWEEP_FILE, default=None) or {"jobs": {}}
        change(data)
        data["updated_at"] = utc_now()
        atomic_write_json(sweep_dir / SWEEP_FILE, data)
        return data


def job_entry(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """One job's line in sweep.json, from its run.json (and its best epoch's metrics.json entry)."""
    run = read_json(run_dir / RUN_FILE, default=None) or {}
    objective = run.get("objective") or {}
    best = run.get("best") or {}
    try:
        entries = read_json(run_dir / METRICS_FILE, default=None) or []
    except (OSError, ValueError):
        entries = []
    return {"run_id": run.get("id"), "run_dir": str(run_dir), "status": effective_status(run) if run else "failed",
            "overrides": overrides, "objective": objective.get("value"), "objective_metric": objective.get("metric"),
            "mode": best.get("mode"), "best": best, "best_metrics": best_epoch_metrics(entries, best.get("epoch")),
            "test_metrics": run.get("test_metrics") or {},
            "error": (run.get("error") or {}).get("message"), "duration_s": run.get("duration_s")}


def ranked(jobs: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Jobs best first by objective (the task's mode), then jobs without one (failed) by number."""
    scored = [(n, j) for n, j in jobs.items() if j.get("objective") is not None]
    mode = next((j.get("mode") for _, j in scored if j.get("mode")), "max")
    scored.sort(key=lambda item: item[1]["objective"], reverse=mode == "max")
    rest = sorted(((n, j) for n, j in jobs.items() if j.get("objective") is None), key=lambda item: int(item[0]))
    return scored + rest


def summarize(data: dict[str, Any]) -> None:
    """Set sweep.json's summary from its job entries (the one place it is computed; called on every change).

    ``failed_jobs``: jobs whose entry is not completed (failed, interrupted), by number. ``best_job``: the
    best objective (None before any). ``status``: ``running`` until the multirun has ended (``ended_at``),
    then ``failed`` if a job did not complete, else ``completed``. ``aggregate``: mean/std/min/max per
    metric over the completed jobs of each group of folds or seeds (:func:`aistudio.sweeps.aggregate.aggregate`).
    """
    jobs = data.get("jobs") or {}
    failed = sorted((n for n, j in jobs.items() if j.get("status") != "completed"),
                    key=lambda n: (0, int(n)) if str(n).isdigit() else (1, str(n)))
    best = ranked(jobs)
    data.update(failed_jobs=failed,
                best_job=best[0][0] if best and best[0][1].get("objective") is not None else None,
                status="running" if not data.get("ended_at") else "failed" if failed else "completed",
                aggregate=aggregate(jobs))


def summary_table(data: dict[str, Any]) -> str:
    """Ranked jobs with the overrides that differ between them (the common ones are the sweep's)."""
    rows = ranked(data.get("jobs") or {})
    common = set.intersection(*(set(j.get("overrides") or []) for _, j in rows)) if rows else set()
    metric = next((j.get("objective_metric") for _, j in rows if j.get("objective_metric")), "objective")
    header = ["rank", "job", "status", metric, "overrides"]
    lines = [[str(i + 1) if j.get("objective") is not None else "-", n, str(j.get("status")),
              f"{j['objective']:.4f}" if j.get("objective") is not None else "-",
              " ".join(o for o in j.get("overrides") or [] if o not in common) or "-"]
             for i, (n, j) in enumerate(rows)]
    widths = [max([len(h), *(len(row[k]) for row in lines)]) for k, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    return "\n".join(out)


class SweepRecorder(Callback):
    """``hydra.callbacks.sweep_recorder``: sweep.json + the ranked table (multirun only)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        overrides = [str(o) for o in config.hydra.overrides.task]
        if "optuna" in str(config.hydra.sweeper.get("_target_", "")):
            from aistudio.sweeps.optuna_search import check_stored_direction

            check_stored_direction(config.hydra.sweeper)  # before anything is written or trained

        def start(data: dict[str, Any]) -> None:
            history = data.setdefault("history", [])
            if data.get("started_at"):  # the same sweep folder again (a resumed Optuna study)
                history.append({k: data.get(k) for k in ("started_at", "ended_at", "status")})
            data.update(sweep_dir=str(sweep_dir.resolve()), started_at=utc_now(), ended_at=None,
                        command=shlex.join([os.path.basename(sys.executable), *sys.argv]), overrides=overrides,
                        sweeper=str(config.hydra.sweeper.get("_target_", "")),
                        launcher=str(config.hydra.launcher.get("_target_", "")))
            summarize(data)  # running; jobs kept from an earlier sweep in this folder still count
        update_sweep(sweep_dir, start)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
        if hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(str(hydra.sweep.dir))
        entry = job_entry(Path(hydra.runtime.output_dir).resolve(), [str(o) for o in hydra.overrides.task])

        def record(data: dict[str, Any]) -> None:
            data.setdefault("jobs", {})[str(hydra.job.num)] = entry
            summarize(data)
        update_sweep(sweep_dir, record)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))

        def finish(data: dict[str, Any]) -> None:
            for number, job in (data.get("jobs") or {}).items():  # the truth at the end: each run.json
                data["jobs"][number] = {**job, **job_entry(Path(job["run_dir"]), job.get("overrides") or [])}
            data["ended_at"] = utc_now()
            summarize(data)
        data = update_sweep(sweep_dir, finish)
        print(f"\nsweep {sweep_dir} ({len(data.get('jobs') or {})} jobs, ranked by objective):\n"
              f"{summary_table(data)}", flush=True)
        if data.get("aggregate"):
            print("\n" + "\n".join(aggregate_lines(data["aggregate"])), flush=True)
        if data["failed_jobs"]:  # every job ran; the exit code still tells scripts and CI
            print(f"Error: {len(data['failed_jobs'])} of {len(data['jobs'])} sweep jobs did not complete (jobs "
                  f"{', '.join(data['failed_jobs'])}); see {sweep_dir / SWEEP_FILE} and each job's run.json",
                  file=sys.stderr)
            sys.exit(1)
