"""Celery tasks: thin, take a job id, and hand over to the supervisor."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

from app.broker import WAKE_TASK
from app.db import make_engine, make_sessionmaker
from app.services import dispatch
from app.settings import get_settings
from workers.celery_app import app
from workers.maintenance import Maintenance
from workers.supervisor import Supervisor

log = logging.getLogger(__name__)

_supervisor: Supervisor | None = None
_maintenance: Maintenance | None = None


def init_supervisor(hostname: str | None = None) -> Supervisor:
    """Build this worker process's engine and supervisor (once)."""
    global _supervisor
    if _supervisor is None:
        settings = get_settings()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        factory = make_sessionmaker(make_engine(settings.resolved_database_url(), pool_size=3))
        name = settings.worker_name or hostname or f"worker@{socket.gethostname()}"

        def send_wake(job_id: str, queue: str) -> bool:
            return dispatch.wake(factory, app, settings, job_id, queue)

        _supervisor = Supervisor(factory, settings, name, send_wake)
    return _supervisor


def start_worker_duties(hostname: str | None, queues: Sequence[str]) -> None:
    """Start the reaper and reconciler thread for the queues this worker serves."""
    global _maintenance
    supervisor = init_supervisor(hostname)
    if _maintenance is None:
        _maintenance = Maintenance(supervisor.factory, supervisor.settings, supervisor, queues,
                                   supervisor.send_wake)
        _maintenance.start()
        log.info("worker %s serves queues %s", supervisor.worker, ", ".join(queues))


def request_shutdown() -> None:
    """Warm shutdown: the running job is handed back at its next batch boundary."""
    if _supervisor is not None:
        _supervisor.shutdown.set()
    if _maintenance is not None:
        _maintenance.stop()


@app.task(name=WAKE_TASK, acks_late=True, ignore_result=True)
def wake(job_id: str) -> str | None:
    """A job waits in this worker's queue: run the most urgent one."""
    claimed = init_supervisor(wake.request.hostname).wake(job_id)
    return claimed[0] if claimed else None
