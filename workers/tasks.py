"""Celery tasks: thin, take a job id, and hand over to the supervisor."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from app.broker import WAKE_TASK
from app.db import make_engine, make_sessionmaker, transaction
from app.services import dispatch
from app.services import workers as worker_service
from app.services.studies import controller as studies
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


def device_check() -> dict[str, Any]:
    """Run workers.devicecheck in a child process; its verdict."""
    try:
        out = subprocess.run([sys.executable, "-m", "workers.devicecheck"], capture_output=True,
                             text=True, timeout=300)
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"ok": False, "device": "?", "gpu_name": None, "detail": f"check failed: {exc}"}


def start_worker_duties(hostname: str | None, queues: Sequence[str]) -> bool:
    """Check the device, register in SQL, start the maintenance thread; False if the check
    failed."""
    global _maintenance
    supervisor = init_supervisor(hostname)
    verdict = device_check()
    state = "ready" if verdict["ok"] else "device_failed"
    with transaction(supervisor.factory) as session:
        worker_service.register(
            session, name=supervisor.worker, hostname=socket.gethostname(), pid=os.getpid(),
            device=str(verdict["device"]), gpu_name=verdict.get("gpu_name"), queues=list(queues),
            state=state, detail=str(verdict["detail"]))
    if not verdict["ok"]:
        log.error("worker %s failed its device check (%s); it takes no jobs", supervisor.worker,
                  verdict["detail"])
    supervisor.device = str(verdict["device"])
    if _maintenance is None:
        _maintenance = Maintenance(supervisor.factory, supervisor.settings, supervisor, queues,
                                   supervisor.send_wake, reconcile=bool(verdict["ok"]))
        _maintenance.start()
    log.info("worker %s on %s serves queues %s", supervisor.worker, verdict["device"],
             ", ".join(queues))
    return bool(verdict["ok"])


def request_shutdown() -> None:
    """Warm shutdown: the running job is handed back at its next batch boundary."""
    if _supervisor is not None:
        _supervisor.shutdown.set()
    if _maintenance is not None:
        _maintenance.stop()


@app.task(name=WAKE_TASK, acks_late=True, ignore_result=True)
def wake(job_id: str) -> str | None:
    """A job waits in this worker's queue: run the most urgent one."""
    supervisor = init_supervisor(wake.request.hostname)
    claimed = supervisor.wake(job_id)
    if claimed is None:
        return None
    try:  # a trial's end is the moment its study can start the next one
        studies.after_job(supervisor.factory, claimed[0], supervisor.settings.limits,
                          supervisor.send_wake)
    except Exception:  # noqa: BLE001 - the maintenance tick retries; the job is recorded
        log.exception("study tick after job %s failed", claimed[0])
    return claimed[0]
