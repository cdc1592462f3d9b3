"""Prometheus metrics: `GET /metrics`.

Job, queue and worker metrics are computed at scrape time from SQL by one collector,
so every API process answers the same figures for the whole fleet on every host (SQL
is the one truth; nothing is counted in memory that a restart or a second process
would lose). HTTP request durations are counted in the API process that served them;
with several API processes on one host set PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multiprocess mode) and any of them reports all, otherwise scrape each process.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.states import TERMINAL_STATES, JobStatus
from app.models import EpochMetrics, Job, JobEvent, WorkerRecord, utcnow

VERSION = "0.1.0"
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 14400)
START_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120)
# Both runners' first event once their framework is imported and the data is loaded.
RUNNER_READY = "training on %"
EPOCH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_DURATION = Histogram(
    "trainery_http_request_duration_seconds", "HTTP requests by route template and status class",
    ["method", "route", "status_class"], buckets=HTTP_BUCKETS, registry=HTTP_REGISTRY)

# A debug figure: how many statements this process sends (bench/service.py compares it
# with 100 and 1,000 event-stream followers).
DB_STATEMENTS = Counter(
    "trainery_db_statements", "SQL statements this API process sent to the database",
    registry=HTTP_REGISTRY)


def count_statements(engine: Engine) -> None:
    """Count every statement engine (and engines derived from it) sends in DB_STATEMENTS."""
    def count(*_: Any) -> None:
        DB_STATEMENTS.inc()

    event.listen(engine, "before_cursor_execute", count)


def _histogram(name: str, doc: str, buckets: tuple[float, ...], label: str,
               samples: Iterable[tuple[str, float]]) -> HistogramMetricFamily:
    """A cumulative histogram family from (label value, observation) pairs."""
    counts: dict[str, list[int]] = {}
    sums: dict[str, float] = {}
    for value, x in samples:
        row = counts.setdefault(value, [0] * (len(buckets) + 1))
        row[next((i for i, b in enumerate(buckets) if x <= b), len(buckets))] += 1
        sums[value] = sums.get(value, 0.0) + x
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, row in sorted(counts.items()):
        cumulative, running = [], 0
        for bound, n in zip([*map(str, buckets), "+Inf"], row, strict=True):
            running += n
            cumulative.append((bound, float(running)))
        family.add_metric([value], cumulative, sums[value])
    return family


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max(0.0, (later - earlier).total_seconds())


class SqlCollector(Collector):
    """Jobs, queues and workers as SQL has them at scrape time."""

    def __init__(self, factory: sessionmaker[Session], worker_lost_after_s: float) -> None:
        self.factory = factory
        self.worker_lost_after_s = worker_lost_after_s

    def collect(self) -> Iterator[Metric]:
        terminal = [s.value for s in TERMINAL_STATES]
        with self.factory() as session:
            yield self._submitted(session)
            finished = session.execute(
                select(Job.framework, Job.status, Job.created_at, Job.started_at,
                       Job.finished_at).where(Job.status.in_(terminal))
                .execution_options(yield_per=1000)).all()
            started = session.execute(
                select(Job.framework, Job.created_at, Job.started_at)
                .where(Job.started_at.is_not(None)).execution_options(yield_per=1000)).all()
            epochs = session.execute(
                select(Job.framework, EpochMetrics.values["epoch_time_s"].as_float())
                .join(Job, Job.id == EpochMetrics.job_id)
                .execution_options(yield_per=1000)).all()
            claims = {(r.job_id, r.attempt): r.ts for r in session.execute(
                select(JobEvent.job_id, JobEvent.attempt, JobEvent.ts).where(
                    JobEvent.kind == "state", JobEvent.to_status == JobStatus.RUNNING.value,
                    JobEvent.from_status == JobStatus.QUEUED.value))}
            ready = session.execute(
                select(Job.framework, JobEvent.job_id, JobEvent.attempt, func.min(JobEvent.ts))
                .join(Job, Job.id == JobEvent.job_id)
                .where(JobEvent.kind == "log", JobEvent.message.like(RUNNER_READY))
                .group_by(Job.framework, JobEvent.job_id, JobEvent.attempt)).all()
            queued = session.execute(
                select(Job.queue, func.count()).where(Job.status == JobStatus.QUEUED.value)
                .group_by(Job.queue)).all()
            since = utcnow() - timedelta(seconds=self.worker_lost_after_s)
            workers = session.execute(
                select(WorkerRecord.name, WorkerRecord.device)
                .where(WorkerRecord.state == "ready", WorkerRecord.heartbeat_at >= since)).all()
            # The claim in the jobs table is the truth of who is busy (as GET /v1/workers).
            busy = set(session.scalars(select(Job.worker).where(Job.status.in_(
                [JobStatus.RUNNING.value, JobStatus.CANCELLING.value]))))

        outcomes = CounterMetricFamily("trainery_jobs_finished", "Jobs that ended, by outcome",
                                       labels=["framework", "outcome"])
        by_outcome: dict[tuple[str, str], int] = {}
        for row in finished:
            key = (row.framework, row.status)
            by_outcome[key] = by_outcome.get(key, 0) + 1
        for (framework, outcome), n in sorted(by_outcome.items()):
            outcomes.add_metric([framework, outcome], n)
        yield outcomes
        yield _histogram(
            "trainery_job_duration_seconds", "Run time of finished jobs (start to end)",
            DURATION_BUCKETS, "framework",
            ((r.framework, d) for r in finished
             if (d := _seconds(r.finished_at, r.started_at)) is not None))
        yield _histogram(
            "trainery_job_queue_wait_seconds", "Time from submission to a worker's claim",
            WAIT_BUCKETS, "framework",
            ((r.framework, d) for r in started
             if (d := _seconds(r.started_at, r.created_at)) is not None))
        yield _histogram(
            "trainery_runner_start_seconds",
            "From a worker's claim to its runner training (framework import, data, model)",
            START_BUCKETS, "framework",
            ((framework, d) for framework, job_id, attempt, ts in ready
             if (d := _seconds(ts, claims.get((job_id, attempt)))) is not None))
        yield _histogram(
            "trainery_epoch_duration_seconds", "Wall time of one training epoch",
            EPOCH_BUCKETS, "framework",
            ((framework, float(t)) for framework, t in epochs if t is not None))

        depth = GaugeMetricFamily("trainery_queue_depth", "Jobs waiting, per queue",
                                  labels=["queue"])
        for queue, n in sorted(queued):
            depth.add_metric([queue], n)
        yield depth
        fleet = GaugeMetricFamily("trainery_workers", "Live workers by device kind and state",
                                  labels=["device", "state"])
        counts: dict[tuple[str, str], int] = {}
        for name, device in workers:
            key = (device.split(":")[0], "busy" if name in busy else "idle")
            counts[key] = counts.get(key, 0) + 1
        for kind in sorted({d for d, _ in counts} | {"cpu"}):
            for state in ("busy", "idle"):
                fleet.add_metric([kind, state], counts.get((kind, state), 0))
        yield fleet
        info = GaugeMetricFamily("trainery_build_info", "Version of the serving code",
                                 labels=["version", "python"])
        info.add_metric([VERSION, platform.python_version()], 1)
        yield info

    @staticmethod
    def _submitted(session: Session) -> CounterMetricFamily:
        family = CounterMetricFamily("trainery_jobs_submitted", "Jobs accepted, by framework",
                                     labels=["framework"])
        for framework, n in sorted(session.execute(
                select(Job.framework, func.count()).group_by(Job.framework)).all()):
            family.add_metric([framework], n)
        return family


def _status_class(code: int) -> str:
    return f"{code // 100}xx"


# HTTP_DURATION's series by their labels: methods x route templates x status classes.
_TIMERS: dict[tuple[str, str, str], Histogram] = {}


class RequestTimer:
    """Times every request, to its response's start, by route template and status class.

    Pure ASGI (no BaseHTTPMiddleware: see app.observability.logging.RequestContext).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            observed = True
            # The template, never the raw path: job ids must not become label values.
            template = getattr(scope.get("route"), "path", "unmatched")
            labels = (scope["method"], template, _status_class(status))
            timer = _TIMERS.get(labels)
            if timer is None:  # labels() takes a lock and checks its values each call
                timer = _TIMERS[labels] = HTTP_DURATION.labels(*labels)
            timer.observe(time.perf_counter() - started)

        async def send_timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                observe(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            if not observed:
                observe(500)


def install_metrics(app: FastAPI) -> None:
    """Time every request by its route template and serve `GET /metrics`."""

    app.add_middleware(RequestTimer)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        registry = CollectorRegistry(auto_describe=False)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry.register(_Forward(HTTP_REGISTRY))
        settings = request.app.state.settings
        registry.register(SqlCollector(request.app.state.sessionmaker,
                                       settings.worker_lost_after_s))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class _Forward(Collector):
    """This process's own metrics, inside a per-scrape registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return iter(self.registry.collect())
