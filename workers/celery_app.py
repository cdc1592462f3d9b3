"""The Celery app: `celery -A workers.celery_app worker`."""

from __future__ import annotations

from typing import Any

from celery.signals import celeryd_after_setup, worker_process_init

from app.broker import make_celery
from app.settings import get_settings

settings = get_settings()
app = make_celery(settings)
app.conf.include = ["workers.tasks"]
celery_app = app

_hostname: str | None = None


@celeryd_after_setup.connect
def _remember_hostname(sender: str, **_: Any) -> None:
    # Runs in the main process before the pool forks; children inherit it.
    global _hostname
    _hostname = sender


@worker_process_init.connect
def _init_worker_process(**_: Any) -> None:
    # Engines are built in the process that uses them, after the fork.
    from workers import tasks

    tasks.init_supervisor(_hostname)
