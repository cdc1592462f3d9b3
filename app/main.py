"""The ASGI app: app.main:app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.errors import install_error_handlers
from app.api.routers import datasets, health, jobs, studies, workers
from app.blobstore import BlobStore
from app.broker import make_celery
from app.db import make_engine, make_sessionmaker
from app.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API; engines and clients are made at start-up, not at import."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or get_settings()
        s.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(s.resolved_database_url(), s.db_pool_size)
        app.state.settings = s
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        app.state.blobstore = BlobStore(app.state.sessionmaker, s.blob_chunk_bytes)
        app.state.celery = make_celery(s)
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(title="Trainery", version="0.1.0", lifespan=lifespan,
                  description="Submit a training job, poll it, download the model.")
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(workers.router)
    app.include_router(studies.router)
    return app


app = create_app()
