"""The Celery app: `celery -A workers.celery_app worker`.

Each worker process runs one job at a time in its own main thread (solo pool:
the training happens in a runner subprocess, so a pool child would add nothing
but a second process to lose), reserves no message beyond the one it runs, and
acknowledges it only when the job ends.
"""

from __future__ import annotations

from typing import Any

from celery.signals import (
    celeryd_after_setup,
    setup_logging,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from app.broker import make_celery
from app.observability.logging import configure_logging
from app.settings import get_settings
from workers import tasks

settings = get_settings()
app = make_celery(settings)
app.conf.update(
    include=["workers.tasks"],
    worker_pool="solo",
    worker_concurrency=1,
    worker_disable_prefetch=True,
)
celery_app = app

_hostname: str | None = None


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    # Connected, this signal replaces Celery's own logging set-up: ours is the one.
    configure_logging("worker", settings.log_format)


@celeryd_after_setup.connect
def _remember_hostname(sender: str, **_: Any) -> None:
    global _hostname
    _hostname = sender


@worker_ready.connect
def _start_duties(sender: Any, **_: Any) -> None:
    # Runs before the consumer's loop starts, so a worker whose device check
    # fails stops consuming before it could take a job.
    prefix = f"{settings.queue_prefix}."
    queues = [q.name for q in sender.task_consumer.queues]
    ok = tasks.start_worker_duties(app, _hostname, [q.removeprefix(prefix) for q in queues])
    if not ok:
        for queue in queues:
            sender.cancel_task_queue(queue)


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    # Called from the signal handler in the main process: only set flags here.
    tasks.request_shutdown()


@worker_shutdown.connect
def _on_stopped(**_: Any) -> None:
    # The consumer has stopped (a running job was handed back): the spares go.
    from workers import tasks

    tasks.stop_worker_duties()
