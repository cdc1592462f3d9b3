"""A real SQL store for a benchmark: a SQLite file migrated by Alembic, a claimed job."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.blobstore import BlobStore
from app.core.spec import JobSpec
from app.db import make_engine, make_sessionmaker, transaction
from app.services import jobs, lifecycle
from app.settings import get_settings
from bench.stack import migrate
from workers.reporting import JobReporter


@contextmanager
def claimed_job(spec: JobSpec, worker: str = "bench") -> Iterator[JobReporter]:
    """The reporter a runner gets: the job submitted and claimed, so its writes pass the fence."""
    with tempfile.TemporaryDirectory(prefix="trainery-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'trainery.db'}"
        migrate(url)
        engine = make_engine(url, pool_size=1)
        factory = make_sessionmaker(engine)
        settings = get_settings()
        try:
            with transaction(factory) as session:
                job, _ = jobs.submit(session, spec, owner="bench", limits=settings.limits,
                                     idempotency_key=None)
                attempt = lifecycle.claim(session, job.id, worker)
            assert attempt is not None
            blobs = BlobStore(factory, settings.blob_chunk_bytes)
            reporter = JobReporter(factory, blobs, job.id, attempt, write_behind=True)
            try:
                yield reporter
            finally:
                reporter.close()
        finally:
            engine.dispose()
