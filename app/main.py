"""The ASGI app: app.main:app."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.admission import Admission
from app.api.body_cap import BodyCap
from app.api.errors import install_error_handlers
from app.api.followers import EventHub
from app.api.hot_reads import HotReads
from app.api.polls import Polls
from app.api.routers import datasets, health, jobs, studies, webhooks, workers
from app.artifacts import open_store
from app.broker import make_celery
from app.db import async_reader, make_engine, make_sessionmaker, reader, writer
from app.observability.logging import configure_logging, install_request_ids, lines_per_turn
from app.observability.metrics import count_statements, install_metrics
from app.services.jobs import PublicCache
from app.services.workers import FleetSnapshot
from app.settings import Settings, get_settings
from app.web.routes import install as install_web

# The collector's thresholds while the app serves (Python's defaults: 700, 10, 10). What
# open connections hold lives long (a thousand followers: their tasks, frames and
# responses), and a full collection walks all of it: 80-160 ms, every second or so under
# polls, with every request in flight waiting. Young collections of 10,000 objects take
# about 1 ms; a full one now comes about 290 times less often (docs/benchmarks.md, "The
# event loop"). Reference counting still frees what is not in a cycle at once.
GC_THRESHOLDS = (10_000, 20, 100)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API; engines and clients are made at start-up, not at import."""
    # Logging first: uvicorn has set up its own by now and logs its start through ours.
    configured = settings or get_settings()
    configure_logging("api", configured.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or get_settings()
        s.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(s.resolved_database_url(), s.db_pool_size)
        count_statements(engine)
        app.state.settings = s
        app.state.engine = engine
        app.state.write_engine = writer(engine)
        app.state.admission = Admission(s.resolved_db_slots(), s.api_queue_wait_s,
                                        s.api_queue_max, s.api_retry_after_s)
        app.state.conversions = Admission(s.max_conversions, s.conversion_wait_s,
                                          s.api_queue_max, s.api_retry_after_s,
                                          what="dataset conversion slot")
        app.state.sessionmaker = make_sessionmaker(engine)
        app.state.blobstore = open_store(app.state.sessionmaker, s)
        app.state.celery = make_celery(s)
        # The reads made under load (polls, followers' ticks) share a reader without a thread.
        reads_engine = async_reader(s.resolved_database_url())
        reads_factory = make_sessionmaker(reader(engine))
        app.state.event_hub = EventHub(reads_factory, async_engine=reads_engine)
        app.state.event_hub.start()
        app.state.fleet = FleetSnapshot(s.worker_lost_after_s)
        app.state.job_cache = PublicCache(s.job_cache_entries)
        app.state.polls = Polls(reads_factory, app.state.admission, s,
                                app.state.fleet, app.state.job_cache, reads_engine)
        if reads_engine is not None:
            count_statements(app.state.polls.engine)
        # What start-up made lives as long as the process: out of the collector's sight, a
        # full collection walks only what requests made (4-6 ms instead of 130-160 ms of
        # stalled requests, about once a second under a poll load: docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        thresholds = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            with lines_per_turn(asyncio.get_running_loop()):
                yield
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()  # an app made and shut down in a longer process (tests) is freed
            await app.state.event_hub.close()
            if reads_engine is not None:
                await reads_engine.dispose()
            engine.dispose()

    # FastAPI's native OpenTelemetry is off: this service exports Prometheus metrics and
    # JSON logs (app/observability); left on, it asks OpenTelemetry for its providers on
    # every request, a measured share of a poll's cost.
    app = FastAPI(title="Trainery", version="0.1.0", lifespan=lifespan,
                  description="Submit a training job, poll it, download the model.",
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    install_error_handlers(app)
    # First added, so innermost: the polls skip routing, inside every other middleware.
    app.add_middleware(HotReads, api=app)
    install_metrics(app)
    install_request_ids(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(workers.router)
    app.include_router(studies.router)
    app.include_router(webhooks.router)
    install_web(app)
    # Last added, so outermost: every body is capped before anything reads it. An upload
    # streams to disk under its own cap (TRAINERY_MAX_UPLOAD_BYTES, app/api/routers/datasets.py).
    app.add_middleware(BodyCap, max_bytes=configured.max_json_body_bytes,
                       exempt_paths=frozenset({datasets.UPLOAD_PATH}))
    return app


app = create_app()
