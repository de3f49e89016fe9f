"""Cross-validation and repeated-seed aggregates of a sweep's jobs (sweep.json's ``aggregate``).

A sweep over ``data.split_index`` (k-fold split schemes) or ``seed`` measures one configuration
several times; a researcher reports it as mean ± std over those runs, not as the best of them. So
the jobs are grouped by their overrides with the ``data.split_index`` and ``seed`` overrides removed
(``model=a,b data.split_index=1,2,3`` gives one group per model), and a group of at least two completed
jobs that differ in split index and/or seed gets, for every metric:

- ``mean``, ``std`` (the *sample* standard deviation, ddof=1: the folds/seeds are a sample of the
  possible ones; ``None`` with one value), ``min``, ``max`` and ``n`` (the jobs that had the metric).

What is aggregated, per job: the metrics of its best epoch (the metrics.json entry of the epoch
run.json's ``best`` names, kept in the job entry as ``best_metrics``: ``val_*`` and ``train_*``, not
the bookkeeping ``epoch``/``step``/``time``/``epoch_time_s``/``lr_*``) plus its ``test_metrics`` (the
best checkpoint on the test split). Failed or interrupted jobs are left out, and each group says how
many made it (``completed`` of ``total``). The group's ``kind`` names what varied: ``folds``
(split index), ``seeds`` (seed) or ``runs`` (both).

Pure functions on sweep.json's job entries: :func:`aggregate` is called by
:func:`aistudio.sweeps.recorder.summarize`, in the same atomic write as the entries.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from aistudio.overrides import override_key

REPEAT_KEYS = ("data.split_index", "seed")  # what a cross-validation / repeated-seed sweep varies
KINDS = {("data.split_index",): "folds", ("seed",): "seeds", ("data.split_index", "seed"): "runs"}
BOOKKEEPING = ("epoch", "step", "time", "epoch_time_s")  # metrics.json fields that are not metrics


def is_metric(name: str, value: Any) -> bool:
    """A finite number that measures the model (a NaN loss or a learning rate is not averaged)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and name not in BOOKKEEPING and not name.startswith("lr_"))


def best_epoch_metrics(entries: list[dict[str, Any]], epoch: int | None) -> dict[str, float]:
    """The metrics of metrics.json's entry for the best ``epoch`` ({} when there is none)."""
    entry = next((e for e in entries if isinstance(e, dict) and e.get("epoch") == epoch), None)
    return {} if epoch is None else {k: float(v) for k, v in (entry or {}).items() if is_metric(k, v)}


def job_metrics(job: dict[str, Any]) -> dict[str, float]:
    """What one job contributes: its best epoch's metrics and its test metrics (the objective alone for
    an entry written before ``best_metrics`` existed)."""
    metrics = dict(job.get("best_metrics") or {})
    if not metrics and job.get("objective_metric") and job.get("objective") is not None:
        metrics[job["objective_metric"]] = job["objective"]
    metrics.update(job.get("test_metrics") or {})
    return {k: float(v) for k, v in metrics.items() if is_metric(k, v)}


def group_key(overrides: list[str]) -> tuple[str, ...]:
    """A job's overrides without the split index and seed: jobs with the same key repeat one configuration."""
    return tuple(sorted(o for o in overrides if override_key(o) not in REPEAT_KEYS))


def group_jobs(jobs: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Job numbers grouped by :func:`group_key`, each group and the groups in job order."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for number in sorted(jobs, key=_job_order):
        groups.setdefault(group_key(jobs[number].get("overrides") or []), []).append(number)
    return list(groups.values())


def varied(jobs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The repeat keys whose value differs between ``jobs`` -> their values (``-``: not overridden)."""
    found: dict[str, list[str]] = {}
    for key in REPEAT_KEYS:
        values = [next((o.split("=", 1)[-1] for o in j.get("overrides") or [] if override_key(o) == key), "-")
                  for j in jobs]
        if len(set(values)) > 1:
            found[key] = list(dict.fromkeys(values))
    return found


def kind_of(varied_keys: list[str]) -> str | None:
    """``folds`` (split index varies), ``seeds`` (seed varies), ``runs`` (both), None (neither)."""
    return KINDS.get(tuple(k for k in REPEAT_KEYS if k in varied_keys))


def metric_stats(values: list[float]) -> dict[str, Any]:
    """mean, sample std (ddof=1; None for one value), min, max and n of one metric over the jobs."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values)}


def aggregate_group(numbers: list[str], jobs: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The aggregate of one group, or None: fewer than two completed jobs, or nothing repeated."""
    members = [jobs[n] for n in numbers]
    kind = kind_of(list(varied(members)))
    done = [n for n in numbers if jobs[n].get("status") == "completed"]
    if kind is None or len(done) < 2:
        return None
    per_job = [job_metrics(jobs[n]) for n in done]
    names = list(dict.fromkeys(name for metrics in per_job for name in metrics))
    common = [o for o in members[0].get("overrides") or [] if all(o in (j.get("overrides") or []) for j in members)]
    return {"overrides": common, "kind": kind, "varied": varied(members), "jobs": numbers, "completed_jobs": done,
            "n": len(done), "total": len(numbers),
            "objective_metric": next((jobs[n].get("objective_metric") for n in done
                                      if jobs[n].get("objective_metric")), None),
            "metrics": {name: metric_stats([m[name] for m in per_job if name in m]) for name in names}}


def aggregate(jobs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every group's aggregate (groups without one are left out), in job order."""
    return [group for numbers in group_jobs(jobs) if (group := aggregate_group(numbers, jobs)) is not None]


def count_label(n: int, total: int, kind: str) -> str:
    """``(3 folds)``, or ``(4 of 5 folds)`` when jobs failed or lack the metric."""
    return f"({n} {kind})" if n == total else f"({n} of {total} {kind})"


def format_value(value: float) -> str:
    """Four decimals for the usual metric scale, four significant digits beyond it (a loss of 3e7)."""
    return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.4g}"


def stat_line(name: str, stats: dict[str, Any], total: int, kind: str) -> str:
    """``val_acc 0.9810 ± 0.0040 (3 folds)  min 0.9750  max 0.9860``."""
    spread = f" ± {format_value(stats['std'])}" if stats.get("std") is not None else ""
    return (f"{name} {format_value(stats['mean'])}{spread} {count_label(stats['n'], total, kind)}"
            f"  min {format_value(stats['min'])}  max {format_value(stats['max'])}")


def shown_metrics(group: dict[str, Any]) -> list[str]:
    """The objective first, then its test counterpart (``val_acc`` -> ``test_acc``); the rest stays in
    sweep.json."""
    objective = group.get("objective_metric") or ""
    test = "test_" + objective.removeprefix("val_") if objective else ""
    shown = [m for m in dict.fromkeys([objective, test]) if m in group["metrics"]]
    return shown or list(group["metrics"])[:1]


def aggregate_lines(groups: list[dict[str, Any]]) -> list[str]:
    """The end-of-sweep lines: one block per group, labelled by the overrides that tell groups apart."""
    if not groups:
        return []
    shared = set.intersection(*(set(g["overrides"]) for g in groups))
    lines = ["mean ± sample std (ddof=1) over each group's completed jobs (all metrics: sweep.json \"aggregate\"):"]
    for group in groups:
        label = " ".join(o for o in group["overrides"] if o not in shared)
        indent = "  " if not label else "    "
        if label:
            lines.append(f"  {label}:")
        lines += [indent + stat_line(m, group["metrics"][m], group["total"], group["kind"])
                  for m in shown_metrics(group)]
    return lines


def _job_order(number: str) -> tuple[int, int | str]:
    return (0, int(number)) if str(number).isdigit() else (1, str(number))
