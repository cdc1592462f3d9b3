"""The Celery client both processes share: queue names and the wake-up message (a job id only)."""

from __future__ import annotations

import logging

from celery import Celery

from app.observability import logging as log_context
from app.settings import Settings

log = logging.getLogger(__name__)

WAKE_TASK = "trainery.wake"


def queue_name(settings: Settings, queue: str) -> str:
    """The broker queue for a job queue, namespaced by the deployment's prefix."""
    return f"{settings.queue_prefix}.{queue}"


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for long jobs: late acks, no prefetch beyond one, no results."""
    celery = Celery("trainery", broker=settings.broker_url)
    celery.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=queue_name(settings, "default"),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2,
                                   "interval_step": 0.5, "interval_max": 1},
    )
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Only Redis has it (other transports pass unknown options on, e.g. to
        # SQLAlchemy's create_engine for the embedded broker, which refuses them).
        celery.conf.broker_transport_options = {
            "visibility_timeout": settings.broker_visibility_timeout_s}
    return celery


def send_wakeup(celery: Celery, settings: Settings, job_id: str, queue: str) -> bool:
    """Tell a worker of queue that a job waits; False if the broker could not be reached.

    The SQL row is the job: a lost wake-up delays it, never loses it.
    """
    try:
        # The request that caused it (if any) follows into the worker's log lines.
        celery.send_task(WAKE_TASK, kwargs={"job_id": job_id,
                                            "request_id": log_context.current("request_id")},
                         queue=queue_name(settings, queue))
        return True
    except Exception as exc:  # noqa: BLE001 - any broker failure means "not sent"
        log.warning("could not send wake-up for %s: %s", job_id, exc)
        return False


def broker_reachable(celery: Celery, timeout: float = 2.0) -> tuple[bool, str]:
    """Whether the broker answers a connection, and what was wrong if not."""
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True, "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure
        return False, f"{type(exc).__name__}: {exc}"
