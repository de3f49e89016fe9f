"""Optuna search helpers: a TPE sampler that explores new points when a stored study is resumed, and
the check that a resumed study optimizes in the task's direction.

A sampler seeded from ``seed`` alone replays the same random start-up trials every time the same
command runs again on the stored study. :class:`ResumableTPESampler` derives its seed from ``seed``
and the number of trials the study already holds when this search asks its first trial (that
trial's number): the same (seed, trials so far) always samples the same points, a fresh study uses
``seed`` itself (as a plain ``TPESampler(seed=seed)`` would), a resumed one draws new points. The
count comes from the study the sweeper hands the sampler, so storage and study name need no
repeating in the config.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from typing import Any

from optuna.samplers import BaseSampler, TPESampler

log = logging.getLogger("aistudio.sweep")


def resumed_seed(seed: int | None, trials: int) -> int | None:
    """``seed`` for a fresh study; for one that holds ``trials`` trials already, a seed derived from both."""
    if seed is None or trials == 0:
        return seed
    digest = hashlib.sha256(f"aistudio-optuna/{int(seed)}/{int(trials)}".encode()).digest()
    return int.from_bytes(digest[:4], "big")  # numpy's RandomState takes 0 .. 2**32 - 1


class ResumableTPESampler(BaseSampler):
    """``hydra.sweeper.sampler``: TPE (every ``TPESampler`` argument) seeded by (seed, trials so far).

    The TPE sampler behind it is built again, with :func:`resumed_seed`, when the first trial this
    sampler sees is not the study's first; from then on it is one ordinary TPE sampler.
    """

    def __init__(self, seed: int | None = None, **tpe_kwargs: Any) -> None:
        self._seed = seed
        self._tpe_kwargs = tpe_kwargs
        self._sampler = TPESampler(seed=seed, **tpe_kwargs)  # checks the arguments now, not at the first trial
        self._trials_before: int | None = None

    @property
    def trials_before(self) -> int | None:
        """Trials the study held when this sampler saw its first trial (None before that)."""
        return self._trials_before

    def _start(self, study: Any, trial: Any) -> None:
        if self._trials_before is not None:
            return
        self._trials_before = trial.number  # numbers count every trial stored before this one
        if trial.number > 0:
            seed = resumed_seed(self._seed, trial.number)
            self._sampler = TPESampler(seed=seed, **self._tpe_kwargs)
            log.info("Optuna study %s already holds %d trials: sampler seed %s (from seed=%s and that count)",
                     study.study_name, trial.number, seed, self._seed)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        self._start(study, trial)  # the first call for every new trial (Trial.__init__, at study.ask())
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        self._start(study, trial)
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        self._start(study, trial)
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


def stored_directions(storage: str, study_name: str) -> list[str] | None:
    """The stored study's directions (``["maximize"]``), or None when no study has that name yet."""
    import optuna

    try:  # the sampler is never used; it only spares building a default one
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
    except KeyError:
        return None
    return [d.name.lower() for d in study.directions]


def direction_names(direction: Any) -> list[str]:
    """``maximize`` / ``Direction.maximize`` / a list of them, as lower-case names."""
    items = [direction] if isinstance(direction, str) or not hasattr(direction, "__iter__") else list(direction)
    return [str(getattr(d, "name", d)).lower() for d in items]


def check_stored_direction(sweeper: Any) -> None:
    """Exit with one clear line when an Optuna sweep would resume a stored study created for the other
    direction: Optuna would silently keep the stored one (e.g. maximizing a loss)."""
    if "optuna" not in str(sweeper.get("_target_", "")) or not sweeper.get("storage") or not sweeper.get("study_name"):
        return
    storage, name = str(sweeper.storage), str(sweeper.study_name)
    stored = stored_directions(storage, name)
    wanted = direction_names(sweeper.get("direction"))
    if stored is not None and stored != wanted:
        print(f"Error: the Optuna study {name!r} ({storage}) was created to {'/'.join(stored)}, but this search "
              f"would {'/'.join(wanted)} (the task's mode) — name a new study with hydra.sweeper.study_name=...",
              file=sys.stderr)
        sys.exit(1)
