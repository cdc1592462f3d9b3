"""The step series (`training.log_every_steps`): batched upserts, and server-side downsampling
that keeps each bucket's min, max and last value so a spike survives any zoom level."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, literal_column, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.models import StepMetric

# What GET /v1/jobs/{id}/metrics?series=steps returns at most: 10k buckets of 3 numbers per
# metric (~1 MB of JSON for a few metrics), whatever the number of steps stored.
MAX_POINTS = 10_000
DEFAULT_POINTS = 1_000

StepLogs = Sequence[tuple[int, dict[str, float]]]


def record(session: Session, job_id: str, steps: StepLogs) -> None:
    """Store (step, {metric: value}) rows in one statement; a step trained again (a resumed
    attempt redoing what a lost one had logged) replaces its row instead of adding one."""
    rows = [{"job_id": job_id, "name": name, "step": step,
             "value": value if math.isfinite(value) else None}
            for step, logs in steps for name, value in logs.items()]
    if not rows:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(StepMetric)
    session.execute(stmt.on_conflict_do_update(
        index_elements=["job_id", "name", "step"], set_={"value": stmt.excluded.value}), rows)


def series(session: Session, job_id: str, max_points: int = DEFAULT_POINTS) -> dict[str, Any]:
    """The step series in at most max_points buckets of equal step width, as columns:
    `steps` (each bucket's last step) and per metric its `min`, `max` and `last` values."""
    lo, hi = session.execute(select(func.min(StepMetric.step), func.max(StepMetric.step))
                             .where(StepMetric.job_id == job_id)).one()
    out: dict[str, Any] = {"series": "steps", "max_points": max_points, "bucket_steps": 1,
                           "steps": [], "metrics": {}}
    if lo is None:
        return out
    width = max(1, math.ceil((hi - lo + 1) / max_points))
    # Integers of ours, inlined: PostgreSQL wants the GROUP BY expression to be the
    # selected one, which two bound parameters would not be.
    bucket = ((StepMetric.step - literal_column(str(int(lo)))) // literal_column(str(width)))
    agg = (select(StepMetric.name, bucket.label("bucket"), func.min(StepMetric.value).label("lo"),
                  func.max(StepMetric.value).label("hi"), func.max(StepMetric.step).label("last"))
           .where(StepMetric.job_id == job_id).group_by(StepMetric.name, bucket).subquery())
    rows = session.execute(
        select(agg.c.name, agg.c.bucket, agg.c.lo, agg.c.hi, agg.c.last, StepMetric.value)
        .join(StepMetric, and_(StepMetric.job_id == job_id, StepMetric.name == agg.c.name,
                               StepMetric.step == agg.c.last))).tuples().all()
    buckets = sorted({b for _, b, *_ in rows})
    at = {b: i for i, b in enumerate(buckets)}
    steps = [0] * len(buckets)
    metrics: dict[str, dict[str, list[float | None]]] = {}
    for name, b, low, high, last_step, last in rows:
        i = at[b]
        steps[i] = max(steps[i], last_step)
        m = metrics.get(name)
        if m is None:
            m = metrics[name] = {k: [None] * len(buckets) for k in ("min", "max", "last")}
        m["min"][i], m["max"][i], m["last"][i] = low, high, last
    out.update(bucket_steps=width, steps=steps, metrics=dict(sorted(metrics.items())))
    return out
