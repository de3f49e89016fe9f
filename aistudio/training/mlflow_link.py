"""``logger=mlflow``: an MLflow run linked to the aistudio run directory it belongs to.

The MLflow run is named after the aistudio run id (plus its overrides when they are short) and tagged
``aistudio.run_id``, ``aistudio.run_dir``, ``aistudio.task``, ``aistudio.model``, ``aistudio.overrides``,
``aistudio.attempt``. Its params are the command-line overrides (``override.<key>``) and the resolved
config under the dotted keys typed on the command line (``optimizer.lr``); Lightning's own
``log_hyperparams`` keeps its ``model/...`` keys, so the two never clash. Lightning logs the metrics.

At the end of fit and of test, and once more when the process exits (run.json then holds the final
status), config.json, metrics.json, run.json and logs/training.log are logged as artifacts, the best
checkpoint's path as the tag ``aistudio.best_checkpoint`` (the file itself with ``log_checkpoint=true``),
the aistudio status as ``aistudio.status`` and as the MLflow run status. Only global rank 0 logs.
mlflow is imported when the logger is built, never by importing this module.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from aistudio.run_layout import CONFIG_FILE, METRICS_FILE, RUN_FILE, TRAINING_LOG
from aistudio.runs.atomic import read_json
from aistudio.runs.record import FINAL_STATUSES

log = logging.getLogger("aistudio.train")

ARTIFACTS = (CONFIG_FILE, METRICS_FILE, RUN_FILE, TRAINING_LOG)
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
HYDRA_FLAGS = ("_partial_", "_recursive_", "_convert_")  # instantiate() flags, not hyperparameters
RUN_NAME_OVERRIDES_MAX = 60  # longer override lists stay in the aistudio.overrides tag only


class RunLinkedMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger, plus the link to the run directory ``run_dir`` (see the module doc)."""

    def __init__(self, run_dir: str | Path, experiment_name: str = "aistudio", tracking_uri: str | None = None,
                 run_name: str | None = None, tags: dict[str, Any] | None = None, log_checkpoint: bool = False,
                 **kwargs: Any):
        if tracking_uri and tracking_uri.startswith("file:"):  # MLflow >= 3 refuses a file store unless opted in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.run_dir = Path(run_dir).resolve()
        self.log_checkpoint = log_checkpoint
        record = read_json(self.run_dir / RUN_FILE) or {}  # written before the trainer (and this) is built
        super().__init__(experiment_name=experiment_name, tracking_uri=tracking_uri,
                         run_name=run_name or default_run_name(record, self.run_dir),
                         tags={**run_tags(record, self.run_dir), **(tags or {})}, **kwargs)
        self._best_model_path = ""
        self._copied_checkpoint: tuple[str, float] | None = None
        self._logged_best: tuple[str, Any] | None = None
        self._exit_hook = False
        self._params: dict[str, str] = {}

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        new_run = not self._initialized and self._run_id is None
        client = super().experiment
        if new_run:
            self._log_run_params()
            if not self._exit_hook:  # the final status is known only after the trainer is done
                atexit.register(self._sync_at_exit)
                self._exit_hook = True
        return client

    def _log_run_params(self) -> None:
        from mlflow.entities import Param

        record = read_json(self.run_dir / RUN_FILE) or {}
        config = read_json(self.run_dir / CONFIG_FILE) or {}
        self._params = run_params(record.get("overrides") or [], config)
        params = [Param(key, value) for key, value in self._params.items()]
        for start in range(0, len(params), 100):  # MLflow's limit per batch
            self._mlflow_client.log_batch(self._run_id, params=params[start:start + 100])

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Lightning's module hyperparameters (``model/num_classes``, ``class_names``), without those the run
        params already show (``model/name`` = ``model.name``) and never one of their keys: MLflow refuses a
        param logged again with another value."""
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

        _ = self.experiment  # the run params go first
        flat = _flatten_dict(_convert_params(params))
        super().log_hyperparams({
            key: value for key, value in flat.items()
            if key not in self._params and self._params.get(key.replace("/", ".")) != _format(value)
            and key.rsplit("/", 1)[-1] not in HYDRA_FLAGS})

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        if getattr(checkpoint_callback, "best_model_path", ""):
            self._best_model_path = checkpoint_callback.best_model_path

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """End of fit / test: Lightning's status for now; the exit hook sets the one run.json ends with."""
        super().finalize(status)
        if self._initialized:
            self._sync_quietly()

    def _sync_at_exit(self) -> None:
        self._sync_quietly(final=True)

    def _sync_quietly(self, final: bool = False) -> None:
        try:
            self.sync(final=final)
        except Exception as err:  # noqa: BLE001 - the aistudio run stands on its own; MLflow is a copy
            log.warning("could not update MLflow run %s: %s", self._run_id, err)

    def sync(self, final: bool = False) -> None:
        """Copy the run directory's state to the MLflow run: artifacts, best checkpoint, status."""
        from mlflow.entities import Metric, RunTag

        client, run_id = self._mlflow_client, self._run_id
        record = read_json(self.run_dir / RUN_FILE) or {}
        for name in ARTIFACTS:
            path = self.run_dir / name
            if path.is_file():
                client.log_artifact(run_id, str(path), str(Path(name).parent) if "/" in name else None)
        tags = {"aistudio.status": record.get("status")}
        best = record.get("best") or {}
        checkpoint = self._best_checkpoint(best)
        if checkpoint:
            tags["aistudio.best_checkpoint"] = str(checkpoint)
            self._copy_checkpoint(checkpoint)
        if best.get("value") is not None:
            tags["aistudio.best"] = f"{best['metric']}={best['value']:.6g} (epoch {best.get('epoch')})"
        error = record.get("error") or {}
        if error.get("message"):
            tags["aistudio.error"] = f"{error.get('type')}: {error['message']}"
        tag_limit = _limit("MAX_TAG_VAL_LENGTH", 5000)
        metrics = []
        if best.get("value") is not None and self._logged_best != (best["metric"], best["value"]):
            # one sortable number per run in the MLflow table: best_val_acc, its step the best epoch
            metrics.append(Metric(_key(f"best_{best['metric']}"), float(best["value"]), _now_ms(),
                                  int(best.get("epoch") or 0)))
            self._logged_best = (best["metric"], best["value"])
        client.log_batch(run_id, metrics=metrics,
                         tags=[RunTag(k, str(v)[:tag_limit]) for k, v in tags.items() if v is not None])
        status = record.get("status")
        if final and status in FINAL_STATUSES:
            client.set_terminated(run_id, MLFLOW_STATUS[status])

    def _best_checkpoint(self, best: dict[str, Any]) -> Path | None:
        """run.json's best checkpoint once the run completed, else the checkpoint callback's, else none."""
        if best.get("checkpoint"):
            return self.run_dir / best["checkpoint"]
        if self._best_model_path and Path(self._best_model_path).is_file():
            return Path(self._best_model_path).resolve()
        return None

    def _copy_checkpoint(self, checkpoint: Path) -> None:
        """``log_checkpoint=true``: copy the best checkpoint into the run's artifacts (again only when it changed)."""
        if not self.log_checkpoint or not checkpoint.is_file():
            return
        stamp = (str(checkpoint), checkpoint.stat().st_mtime)
        if stamp != self._copied_checkpoint:
            self._mlflow_client.log_artifact(self._run_id, str(checkpoint), "checkpoints")
            self._copied_checkpoint = stamp


def default_run_name(record: dict[str, Any], run_dir: Path) -> str:
    """The aistudio run id (what ``aistudio runs`` and ``resume=`` take), its attempt after a resume (each
    attempt is an MLflow run of its own, tagged with the same run id), then the overrides when short."""
    name = str(record.get("id") or run_dir.name)
    if int(record.get("attempt") or 1) > 1:
        name += f" (attempt {record['attempt']})"
    overrides = " ".join(record.get("overrides") or [])
    return f"{name} {overrides}" if overrides and len(overrides) <= RUN_NAME_OVERRIDES_MAX else name


def run_tags(record: dict[str, Any], run_dir: Path) -> dict[str, str]:
    overrides = record.get("overrides") or []
    tags = {
        "aistudio.run_id": record.get("id"),
        "aistudio.run_dir": str(run_dir),
        "aistudio.task": record.get("task"),
        "aistudio.model": record.get("model"),
        "aistudio.overrides": " ".join(overrides),
        "aistudio.attempt": record.get("attempt"),
        "mlflow.source.git.commit": (record.get("git") or {}).get("commit"),
        "mlflow.note.content": (f"aistudio run `{record.get('id')}` in `{run_dir}`\n\n"
                                f"`python train.py {' '.join(overrides)}`") if record else None,
    }
    return {key: str(value) for key, value in tags.items() if value not in (None, "")}


def run_params(overrides: list[str], config: dict[str, Any]) -> dict[str, str]:
    """``override.<key>``: each command-line override as given; ``<dotted.key>``: the resolved config."""
    limit = _limit("MAX_PARAM_VAL_LENGTH", 500)
    params: dict[str, str] = {}
    for override in overrides:
        key, has_value, value = override.partition("=")
        deleted = key.startswith("~")
        params[_key(f"override.{key.lstrip('+~')}")] = value if has_value else ("(deleted)" if deleted else "")
    for key, value in flatten_config(config):
        params[_key(key)] = value
    return {key: value[:limit] for key, value in params.items()}


def flatten_config(node: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Leaves of the resolved config as (``a.b.c``, value as typed on the command line); Hydra's own
    ``_partial_``/``_recursive_``/``_convert_`` flags are left out (``_target_`` is kept)."""
    if not isinstance(node, dict):
        return [(prefix.rstrip("."), _format(node))]
    leaves: list[tuple[str, str]] = []
    for key, value in node.items():
        if key in HYDRA_FLAGS:
            continue
        leaves.extend(flatten_config(value, f"{prefix}{key}."))
    return leaves


def _format(value: Any) -> str:
    if value is None or isinstance(value, (bool, list, tuple, dict)):
        return json.dumps(value, default=str)  # null, true, [0.5, 0.5]: Hydra's spelling
    return str(value)


def _key(key: str) -> str:
    """A valid MLflow param/tag/metric key: letters, digits, ``_ - . / :`` and spaces, at most 250 characters."""
    key = re.sub(r"[^\w\-./ :]", "_", key)
    return re.sub(r"/+", "/", key).strip("/")[:250]


def _limit(name: str, fallback: int) -> int:
    try:
        from mlflow.utils import validation

        return int(getattr(validation, name))
    except (ImportError, AttributeError):
        return fallback


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
