"""Celery tasks: thin, take a job id, and hand over to the supervisor.

The task is a shared_task, so this module needs no Celery app of its own:
workers.celery_app imports it (for the worker hooks), never the other way round."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from celery import Celery, shared_task

from app.broker import WAKE_TASK
from app.db import make_engine, make_sessionmaker, transaction
from app.observability import logging as log_context
from app.services import dispatch
from app.services import workers as worker_service
from app.services.studies import controller as studies
from app.settings import get_settings
from workers import devicecheck
from workers.maintenance import Maintenance
from workers.supervisor import Supervisor
from workers.webhook_sender import WebhookSender

log = logging.getLogger(__name__)

_supervisor: Supervisor | None = None
_maintenance: Maintenance | None = None


def init_supervisor(app: Celery, hostname: str | None = None) -> Supervisor:
    """Build this worker process's engine and supervisor (once); app sends its wake-ups."""
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


def device_check() -> dict[str, Any]:
    """Run workers.devicecheck in a child process (on the CPU, its cpu_check here); its
    verdict."""
    if not devicecheck.gpu_pinned():
        return devicecheck.cpu_check()
    try:
        out = subprocess.run([sys.executable, "-m", "workers.devicecheck"], capture_output=True,
                             text=True, timeout=300)
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"ok": False, "device": "?", "gpu_name": None, "detail": f"check failed: {exc}"}


def start_worker_duties(app: Celery, hostname: str | None, queues: Sequence[str]) -> bool:
    """Check the device, register in SQL, start the maintenance thread; False if the check
    failed."""
    global _maintenance
    supervisor = init_supervisor(app, hostname)
    verdict = device_check()
    state = "ready" if verdict["ok"] else "device_failed"
    with transaction(supervisor.factory) as session:
        worker_service.register(
            session, name=supervisor.worker, hostname=socket.gethostname(), pid=os.getpid(),
            device=str(verdict["device"]), gpu_name=verdict.get("gpu_name"), queues=list(queues),
            state=state, detail=str(verdict["detail"]),
            slot_device=supervisor.settings.slot_device)
    if not verdict["ok"]:
        log.error("worker %s failed its device check (%s); it takes no jobs", supervisor.worker,
                  verdict["detail"])
    supervisor.device = str(verdict["device"])
    if verdict["ok"]:
        supervisor.pool.fill()
    if _maintenance is None:
        _maintenance = Maintenance(supervisor.factory, supervisor.settings, supervisor, queues,
                                   supervisor.send_wake, reconcile=bool(verdict["ok"]))
        _maintenance.start()
        WebhookSender(supervisor.factory, supervisor.settings).start()
    log.info("worker %s on %s serves queues %s", supervisor.worker, verdict["device"],
             ", ".join(queues))
    return bool(verdict["ok"])


def request_shutdown() -> None:
    """Warm shutdown: the running job is handed back at its next batch boundary."""
    if _supervisor is not None:
        _supervisor.shutdown.set()
    if _maintenance is not None:
        _maintenance.stop()


def stop_worker_duties() -> None:
    """At worker exit: stop the spare runners (a SIGKILLed worker's die by PDEATHSIG)."""
    if _supervisor is not None:
        _supervisor.pool.close()


@shared_task(name=WAKE_TASK, acks_late=True, ignore_result=True)
def wake(job_id: str, request_id: str | None = None) -> str | None:
    """A job waits in this worker's queue: run the most urgent one."""
    supervisor = init_supervisor(wake.app, wake.request.hostname)
    with log_context.bound(request_id=request_id, worker=supervisor.worker):
        claimed = supervisor.wake(job_id)
        if claimed is None:
            return None
        try:  # a trial's end is the moment its study can start the next one
            studies.after_job(supervisor.factory, claimed[0], supervisor.settings.limits,
                              supervisor.send_wake)
        except Exception:  # noqa: BLE001 - the maintenance tick retries; the job is recorded
            log.exception("study tick after job %s failed", claimed[0])
    return claimed[0]
