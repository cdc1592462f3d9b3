"""Optuna as the sampler, driven by ask/tell on an in-memory study rebuilt from our trials.

Why not an Optuna RDB storage: it creates and migrates its own tables (with its own Alembic
version table, which would collide with ours) and would be a second source of truth beside
study_trials. Instead each decision builds `optuna.create_study()` in memory, adds every past
trial of ours as a FrozenTrial (params, state, value or per-rung values, and the system attrs
the sampler left on it, such as a grid point), and asks for one new trial. The sampler is
seeded with (study seed + trial number), so a decision repeated after a crash samples the
same params, and different trial numbers sample different ones (the grid sampler keeps the
study seed: its grid order comes from it).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from app.schemas.studies import ChoiceDist, Distribution, IntDist, LogUniformDist, UniformDist
from app.services.studies import space as sp

optuna.logging.set_verbosity(logging.WARNING)

_STATES = {"running": TrialState.RUNNING, "completed": TrialState.COMPLETE,
           "paused": TrialState.PRUNED, "pruned": TrialState.PRUNED,
           "failed": TrialState.FAIL, "cancelled": TrialState.FAIL}
_OPTUNA_PARAMS = "optuna_params"  # the key in sampler_attrs keeping Optuna's own values


@dataclass(frozen=True)
class PastTrial:
    """A trial of ours as the sampler needs it."""

    state: str
    value: float | None
    rung_values: dict[int, float]
    sampler_attrs: dict[str, Any]


def distribution(dist: Distribution) -> BaseDistribution:
    """Our distribution as Optuna's (a choice samples an index, so any JSON value works)."""
    if isinstance(dist, ChoiceDist):
        return CategoricalDistribution(list(range(len(dist.values))))
    if isinstance(dist, IntDist):
        return IntDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, LogUniformDist):
        return FloatDistribution(dist.low, dist.high, log=True)
    assert isinstance(dist, UniformDist)
    return FloatDistribution(dist.low, dist.high, step=dist.step)


def _sampler(name: str, seed: int, number: int, space: dict[str, Distribution],
             max_trials: int) -> optuna.samplers.BaseSampler:
    if name == "grid":
        # One seed for the whole study: the grid's order is drawn from it, and grid ids
        # stored on past trials must mean the same point at every decision.
        grid = {path: (list(range(len(d.values))) if isinstance(d, ChoiceDist)
                       else sp.grid_values(d)) for path, d in space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed)  # type: ignore[arg-type]
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed + number)
    startup = max(2, min(10, max_trials // 4))
    return optuna.samplers.TPESampler(seed=seed + number, n_startup_trials=startup,
                                      constant_liar=True)


def ask(space: dict[str, Distribution], sampler: str, seed: int, number: int, max_trials: int,
        mode: str, past: list[PastTrial]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params by spec path, sampler attrs to store) for trial `number`."""
    dists = {path: distribution(d) for path, d in space.items()}
    study = optuna.create_study(
        direction="maximize" if mode == "max" else "minimize",
        sampler=_sampler(sampler, seed, number, space, max_trials))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # add_trial and constant_liar warn as experimental
        for trial in past:
            study.add_trial(_frozen(trial, dists))
        asked = study.ask(dists)
        attrs = dict(study.trials[-1].system_attrs)
    internal = dict(asked.params)
    params = {path: (space[path].values[internal[path]]  # type: ignore[union-attr]
                     if isinstance(space[path], ChoiceDist) else internal[path])
              for path in space}
    return params, {**attrs, _OPTUNA_PARAMS: internal}


def _frozen(trial: PastTrial, dists: dict[str, BaseDistribution]) -> optuna.trial.FrozenTrial:
    state = _STATES[trial.state]
    attrs = {k: v for k, v in trial.sampler_attrs.items() if k != _OPTUNA_PARAMS}
    params = trial.sampler_attrs.get(_OPTUNA_PARAMS, {})
    value = trial.value if state == TrialState.COMPLETE else None
    if state == TrialState.COMPLETE and value is None:
        state = TrialState.FAIL
    return optuna.trial.create_trial(
        state=state, value=value, params=params,
        distributions={k: dists[k] for k in params}, system_attrs=attrs,
        intermediate_values=({e: v for e, v in trial.rung_values.items()}
                             if state == TrialState.PRUNED else None))
