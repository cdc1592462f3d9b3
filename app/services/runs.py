"""Runs side by side: timed metric series, the spec fields that differ, best and last values."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import InvalidInput, problem
from app.models import EpochMetrics, Job
from app.services import jobs as job_service

MAX_COMPARE = 20
# Metrics where a larger value is better; every other one (losses, errors) is minimised.
HIGHER_IS_BETTER = ("acc", "auc", "f1", "precision", "recall", "r2")
# Metrics that describe the run rather than score it: no "best".
UNSCORED = frozenset({"lr"})
# The order charts are drawn in, by metric name without "val_"; "*" is every other metric.
CHART_ORDER = ("loss", "accuracy", "mae", "mse", "*", "lr", "epoch_time_s")


def series(session: Session, job: Job) -> list[dict[str, Any]]:
    """One row per epoch: epoch, t (seconds since the job started) and the metric values."""
    return series_of(session, [job])[job.id]


def series_of(session: Session, jobs: list[Job]) -> dict[str, list[dict[str, Any]]]:
    """series() of several jobs in one query (plain rows: no ORM objects for 20k epochs)."""
    out: dict[str, list[dict[str, Any]]] = {j.id: [] for j in jobs}
    if not jobs:
        return out
    starts: dict[str, datetime | None] = {j.id: j.started_at for j in jobs}
    result = session.execute(
        select(EpochMetrics.job_id, EpochMetrics.epoch, EpochMetrics.values,
               EpochMetrics.created_at)
        .where(EpochMetrics.job_id.in_(list(out)))
        .order_by(EpochMetrics.job_id, EpochMetrics.epoch))
    for job_id, epoch, values, created in result.tuples():
        start = starts[job_id]
        if start is None:  # no start recorded: time from the first epoch
            start = starts[job_id] = created
        t = max((created - start).total_seconds(), 0.0)
        out[job_id].append({"epoch": epoch, "t": round(t, 3), **values})
    return out


def columns(rows: list[dict[str, Any]], names: list[str]) -> dict[str, list[float | None]]:
    """A series as columns (epoch, t, then each metric; None where missing), for charts.

    Values keep 6 significant digits: plenty for a line on screen, and the page of
    20 runs x 1,000 epochs stays near a megabyte.
    """
    out: dict[str, list[float | None]] = {"epoch": [r["epoch"] for r in rows],
                                          "t": [r["t"] for r in rows]}
    for name in names:
        out[name] = [float(f"{v:.6g}") if isinstance(v := r.get(name), (int, float)) else None
                     for r in rows]
    return out


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    """The metric keys of a series in first-seen order (not epoch or t)."""
    names: dict[str, None] = {}
    for row in rows:
        for k, v in row.items():
            if k not in ("epoch", "t") and isinstance(v, (int, float)):
                names.setdefault(k)
    return list(names)


def chart_order(names: list[str]) -> list[str]:
    """names sorted as the charts show them: losses first, lr and timings last."""
    def rank(name: str) -> int:
        base = name.removeprefix("val_")
        return CHART_ORDER.index(base if base in CHART_ORDER else "*")

    return sorted(names, key=rank)


def higher_is_better(metric: str) -> bool:
    base = metric.removeprefix("val_")
    return any(base.startswith(h) for h in HIGHER_IS_BETTER)


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per metric: the best value (None for unscored ones like lr) and the last one."""
    out: dict[str, dict[str, float | None]] = {}
    for name in metric_names(rows):
        values = [float(r[name]) for r in rows if isinstance(r.get(name), (int, float))]
        if not values:
            continue
        best: float | None = None
        if name not in UNSCORED:
            best = max(values) if higher_is_better(name) else min(values)
        out[name] = {"best": best, "last": values[-1]}
    return out


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": [1]}} -> {"a.b[0]": 1}: a spec as field paths."""
    if isinstance(value, dict):
        if not value and prefix:
            return {prefix: {}}
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list):
        if not value:
            return {prefix: []}
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def differing_fields(specs: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """The field paths whose values are not the same in every spec, with each spec's value.

    A field missing from a spec counts as None; the job name always differs by design and is
    shown elsewhere, so it is left out.
    """
    flat = [flatten(s) for s in specs]
    paths: dict[str, None] = {}
    for f in flat:
        for p in f:
            paths.setdefault(p)
    out = []
    for p in paths:
        if p == "name":
            continue
        values = [f.get(p) for f in flat]
        if any(v != values[0] for v in values[1:]):
            out.append((p, values))
    return out


def parse_ids(raw: list[str]) -> list[str]:
    """Job ids from ?ids=a&ids=b or ?ids=a,b, de-duplicated; InvalidInput past MAX_COMPARE."""
    ids: dict[str, None] = {}
    for item in raw:
        for part in item.split(","):
            if part.strip():
                ids.setdefault(part.strip())
    if not ids:
        raise InvalidInput([problem(("ids",), "tick at least one job to compare")])
    if len(ids) > MAX_COMPARE:
        raise InvalidInput([problem(("ids",), f"{len(ids)} jobs asked for; at most "
                                    f"{MAX_COMPARE} can be compared at once")])
    return list(ids)


def compare(session: Session, owner: str, ids: list[str]) -> list[tuple[Job, list[dict[str, Any]]]]:
    """Each job (the owner's only; JobNotFound otherwise) with its timed series."""
    jobs = [job_service.get_job(session, job_id, owner) for job_id in ids]
    rows = series_of(session, jobs)
    return [(job, rows[job.id]) for job in jobs]
