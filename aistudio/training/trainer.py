"""Trainer factory: hardware + trainer settings + callbacks + loggers, all from the resolved config."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate

from aistudio.training.callbacks import RunDirectoryCallback
from aistudio.training.checkpoint import AtomicCheckpointIO
from aistudio.training.speed import SpeedSettings


def instantiate_all(group: Mapping[str, Any] | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict-shaped group (callbacks, logger); nulls disable one."""
    if not group:
        return []
    built = []
    for node in group.values():
        if isinstance(node, Mapping) and "_target_" in node:
            obj = instantiate(node)
            if obj is not None:
                built.append(obj)
    return built


def build_checkpoint_io(node: Mapping[str, Any] | None, accelerator: str) -> Any:
    """``checkpoint_io``, its ``background="auto"`` resolved for ``accelerator`` (see
    :class:`aistudio.training.checkpoint.AtomicCheckpointIO`); none configured: atomic writes in line."""
    checkpoint_io = instantiate(node) if node else AtomicCheckpointIO()
    return checkpoint_io.for_accelerator(accelerator) if isinstance(checkpoint_io, AtomicCheckpointIO) else checkpoint_io


def build_trainer(config: Mapping[str, Any], run_callback: RunDirectoryCallback,
                  extra_callbacks: Iterable[Any] = ()) -> pl.Trainer:
    """The Trainer of a resolved config (a plain dict, as config.json holds it, or the composed DictConfig)."""
    callbacks = instantiate_all(config.get("callbacks")) + [run_callback, *extra_callbacks]
    loggers = instantiate_all(config.get("logger"))
    if not loggers:  # logger=none: Lightning refuses an LR monitor without a logger; metrics.json has the lr
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    hardware = instantiate(config["hardware"])
    callbacks.append(SpeedSettings(**hardware.pop("speed", {})))
    has_bar = any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks)
    checkpoint_io = build_checkpoint_io(config.get("checkpoint_io"), hardware["accelerator"])
    return instantiate(config["trainer"], callbacks=callbacks, logger=loggers or False, plugins=[checkpoint_io],
                       enable_progress_bar=has_bar, **hardware)


EVALUATION_TRAINER_KEYS = ("deterministic", "benchmark", "limit_test_batches", "limit_predict_batches")


def build_evaluation_trainer(config: Mapping[str, Any], extra_callbacks: Iterable[Any] = ()) -> pl.Trainer:
    """A Trainer for using a trained run (evaluate, predict): the run's accelerator and precision on one
    device, its progress bar, no logger and no checkpoints (the run directory is not a training run's
    again). ``limit_test_batches`` is kept so an evaluation of a run reproduces its recorded test.
    ``extra_callbacks``: e.g. predict.py's writer."""
    hardware = instantiate(config["hardware"])
    speed = {**hardware.pop("speed", {}), "compile": None}  # channels-last and matmul precision, not compiled
    devices = hardware["devices"]
    hardware.update(devices=devices[:1] if isinstance(devices, list) else 1, strategy="auto", num_nodes=1)
    bar = (config.get("callbacks") or {}).get("progress_bar")
    callbacks = instantiate_all({"progress_bar": bar}) + [SpeedSettings(**speed), *extra_callbacks]
    has_bar = any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks)  # kind=log is a plain callback
    trainer = config.get("trainer") or {}
    settings = {k: trainer[k] for k in EVALUATION_TRAINER_KEYS if trainer.get(k) is not None}
    return pl.Trainer(callbacks=callbacks, logger=False, enable_checkpointing=False,
                      enable_progress_bar=has_bar, enable_model_summary=False, **settings, **hardware)
