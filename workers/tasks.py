"""Celery tasks: thin, take a job id, and hand over to the supervisor."""

from __future__ import annotations

import logging
import socket

from app.broker import WAKE_TASK
from app.db import make_engine, make_sessionmaker
from app.settings import get_settings
from workers.celery_app import app
from workers.supervisor import Supervisor

log = logging.getLogger(__name__)

_supervisor: Supervisor | None = None


def init_supervisor(hostname: str | None = None) -> Supervisor:
    """Build this worker process's engine and supervisor (once)."""
    global _supervisor
    if _supervisor is None:
        settings = get_settings()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.resolved_database_url(), pool_size=2)
        name = settings.worker_name or hostname or f"worker@{socket.gethostname()}"
        _supervisor = Supervisor(make_sessionmaker(engine), settings, name)
    return _supervisor


@app.task(name=WAKE_TASK, acks_late=True, ignore_result=True)
def wake(job_id: str) -> str | None:
    """A job waits in this worker's queue: run the most urgent one."""
    supervisor = init_supervisor(wake.request.hostname)
    return supervisor.wake(job_id)
