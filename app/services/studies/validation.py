"""Checks a study request beyond its schema: paths, bounds against the spec, grid, objective.

Every problem is a 422 entry naming the request field (`space.<path>.high`), gathered so one
answer lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app.core.errors import InvalidInput, problem, validation_problems
from app.core.estimate import DataShape
from app.core.spec import JobSpec
from app.schemas.studies import MAX_GRID_POINTS, IntDist, StudyCreate
from app.services.jobs import check_limits
from app.services.studies import space as sp
from app.settings import Limits

# Fields a study sets per trial itself (asha's epoch budgets) or that make no sense to search.
_ASHA_OWNED = "training.epochs"


@dataclass(frozen=True)
class Plan:
    """What validation derives that the controller needs: the base spec and the budgets."""

    base: dict[str, Any]
    grid_size: int | None
    rungs: list[int] | None


def metric_choices(spec: JobSpec) -> list[str]:
    """The metrics a job of this spec reports each epoch, validation ones included."""
    names = spec.metric_names()
    has_validation = spec.dataset.validation_split > 0 or spec.dataset.id is not None
    return [*names, *(f"val_{n}" for n in names)] if has_validation else names


def asha_rungs(min_epochs: int, reduction_factor: int, max_rungs: int, epochs: int) -> list[int]:
    """Epoch budgets min_epochs * rf^k below the base's epochs, then the base's epochs."""
    below = [min_epochs * reduction_factor ** k for k in range(max_rungs - 1)]
    return [e for e in below if e < epochs] + [epochs]


def validate(req: StudyCreate, limits: Limits, data: DataShape | None = None) -> Plan:
    """The study's plan, or InvalidInput listing every problem with its field path; data is
    an uploaded dataset's shape, for the resource estimates."""
    base = req.base.model_dump(mode="json")
    problems: list[dict[str, Any]] = []
    try:
        check_limits(req.base, limits, data=data)
    except InvalidInput as exc:
        problems += [problem(("base", *p["loc"]), p["message"], p["type"]) for p in exc.detail]
    for path, dist in req.space.items():
        loc: tuple[str | int, ...] = ("space", path)
        try:
            current = sp.get_value(base, path)
        except sp.PathError as exc:
            problems.append(problem(loc, str(exc), "unknown_path"))
            continue
        if sp.is_continuous(dist) and isinstance(current, int) and not isinstance(current, bool):
            problems.append(problem(loc, f"{path} is an integer field; search it with type int",
                                    "type_mismatch"))
            continue
        if isinstance(dist, IntDist) and isinstance(current, float):
            problems.append(problem(loc, f"{path} is a float field; search it with type uniform "
                                    "or loguniform", "type_mismatch"))
            continue
        for where, value in sp.bounds(dist):
            problems += _bound_problems(base, path, value, (*loc, *_where(dist, where)),
                                        limits, data)
    search = req.searcher
    grid_size = None
    if search.name == "grid":
        grid_size = 1
        for path, dist in req.space.items():
            values = sp.grid_values(dist)
            if values is None:
                problems.append(problem(("space", path), "grid needs a finite set of values: give "
                                        "this range a step, or use choice", "grid_continuous"))
            else:
                grid_size *= len(values)
        if grid_size > MAX_GRID_POINTS:
            problems.append(problem(("space",), f"the grid has {grid_size} points; at most "
                                    f"{MAX_GRID_POINTS} are allowed", "limit_exceeded"))
    rungs = None
    if search.name == "asha":
        rungs, asha_problems = _asha_problems(req)
        problems += asha_problems
    choices = metric_choices(req.base)
    if req.objective.metric not in choices:
        problems.append(problem(("objective", "metric"), f"the base spec's jobs do not report "
                                f"{req.objective.metric!r}; choose one of " + ", ".join(choices),
                                "unknown_metric"))
    if problems:
        raise InvalidInput(problems)
    return Plan(base=req.base.model_dump(mode="json", exclude_none=True), grid_size=grid_size,
                rungs=rungs)


def _where(dist: Any, where: str | int) -> tuple[str | int, ...]:
    return ("values", where) if isinstance(where, int) else (where,)


def _bound_problems(base: dict[str, Any], path: str, value: Any, loc: tuple[str | int, ...],
                    limits: Limits, data: DataShape | None) -> list[dict[str, Any]]:
    """Problems with the spec that has path set to value (its own field first)."""
    try:
        spec = JobSpec.model_validate(sp.apply(base, {path: value}))
        check_limits(spec, limits, data=data)
    except ValidationError as exc:
        found = validation_problems(exc.errors())
    except InvalidInput as exc:
        found = list(exc.detail)
    else:
        return []
    own = [p for p in found if p["path"] == path] or found
    return [problem(loc, f"with {path} = {value!r} the spec is invalid at {p['path']}: "
                    f"{p['message']}", "invalid_bound") for p in own[:1]]


def _asha_problems(req: StudyCreate) -> tuple[list[int], list[dict[str, Any]]]:
    search, training = req.searcher, req.base.training
    assert search.min_epochs and search.reduction_factor and search.max_rungs
    problems = []
    if search.min_epochs >= training.epochs:
        problems.append(problem(("searcher", "min_epochs"), f"must be below base.training.epochs "
                                f"({training.epochs}), the budget of the top rung"))
    if _ASHA_OWNED in req.space:
        problems.append(problem(("space", _ASHA_OWNED), "asha sets each trial's epochs itself "
                                "(its rung budgets); search something else"))
    if training.lr_schedule.name == "cosine":
        problems.append(problem(("base", "training", "lr_schedule", "name"),
                                "asha trains trials rung by rung and a cosine schedule decays "
                                "over each run's epochs; use constant or step"))
    rungs = asha_rungs(search.min_epochs, search.reduction_factor, search.max_rungs,
                       training.epochs)
    if len(rungs) < 2 and not problems:
        problems.append(problem(("searcher", "max_rungs"), "asha needs at least 2 rungs"))
    return rungs, problems
