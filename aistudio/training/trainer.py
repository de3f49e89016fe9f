"""Trainer factory: hardware + trainer settings + callbacks + loggers, all from the resolved config."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate

from aistudio.training.callbacks import RunDirectoryCallback
from aistudio.training.checkpoint import AtomicCheckpointIO


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


def build_trainer(config: Mapping[str, Any], run_callback: RunDirectoryCallback,
                  extra_callbacks: Iterable[Any] = ()) -> pl.Trainer:
    """The Trainer of a resolved config (a plain dict, as config.json holds it, or the composed DictConfig)."""
    callbacks = instantiate_all(config.get("callbacks")) + [run_callback, *extra_callbacks]
    loggers = instantiate_all(config.get("logger"))
    if not loggers:  # logger=none: Lightning refuses an LR monitor without a logger; metrics.json has the lr
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    hardware = instantiate(config["hardware"])
    has_bar = any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks)
    checkpoint_io = instantiate(config["checkpoint_io"]) if config.get("checkpoint_io") else AtomicCheckpointIO()
    return instantiate(config["trainer"], callbacks=callbacks, logger=loggers or False, plugins=[checkpoint_io],
                       enable_progress_bar=has_bar, **hardware)
