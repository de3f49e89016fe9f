"""Trainer factory: hardware + trainer settings + callbacks + loggers, all from the composed config."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from aistudio.training.callbacks import RunDirectoryCallback
from aistudio.training.checkpoint import AtomicCheckpointIO


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict-shaped group (callbacks, logger); nulls disable one."""
    if not group:
        return []
    built = []
    for node in group.values():
        if isinstance(node, DictConfig) and "_target_" in node:
            obj = instantiate(node)
            if obj is not None:
                built.append(obj)
    return built


def build_trainer(cfg: DictConfig, run_callback: RunDirectoryCallback,
                  extra_callbacks: Iterable[Any] = ()) -> pl.Trainer:
    callbacks = instantiate_all(cfg.get("callbacks")) + [run_callback, *extra_callbacks]
    loggers = instantiate_all(cfg.get("logger"))
    if not loggers:  # logger=none: Lightning refuses an LR monitor without a logger; metrics.json has the lr
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    hardware = instantiate(cfg.hardware)
    has_bar = any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks)
    checkpoint_io = instantiate(cfg.checkpoint_io) if cfg.get("checkpoint_io") else AtomicCheckpointIO()
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[checkpoint_io],
                       enable_progress_bar=has_bar, **hardware)
