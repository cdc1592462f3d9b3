"""Each worker's background duties: reap jobs whose worker vanished, re-send lost wake-ups,
tick hyperparameter studies (app/services/studies/controller.py).

Recovery comes from SQL heartbeats, never from the broker: Celery acknowledges a
task whose worker died, and Redis redelivers unacknowledged ones on its own clock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app.core.states import JobStatus
from app.db import transaction
from app.models import Job, utcnow
from app.services import lifecycle
from app.services import workers as worker_service
from app.services.studies import controller as studies
from app.settings import Settings
from workers.supervisor import Supervisor

log = logging.getLogger(__name__)


class Maintenance:
    """Runs reap() and reconcile() every maintenance_interval_s on a daemon thread."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings, supervisor: Supervisor,
                 queues: Sequence[str], send_wake: Callable[[str, str], object],
                 reconcile: bool = True) -> None:
        self.factory, self.settings, self.supervisor = factory, settings, supervisor
        self.queues, self.send_wake = list(queues), send_wake
        self.reconciles = reconcile  # a worker that takes no jobs must not claim to be idle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="trainery-maintenance",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.maintenance_interval_s):
            try:
                self.beat()
                self.reap()
                if self.reconciles:
                    self.reconcile()
                studies.tick_all(self.factory, self.settings.limits, self.send_wake)
            except Exception:  # noqa: BLE001 - a bad tick must not end the thread
                log.exception("maintenance tick failed")
        try:
            self.beat(state="stopped")
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.exception("could not record the worker's stop")

    def beat(self, state: str | None = None) -> None:
        """Record in SQL that this worker is alive and what it runs."""
        current = self.supervisor.current
        with transaction(self.factory) as session:
            worker_service.beat(session, self.supervisor.worker,
                                current[0] if current else None, state)

    def reap(self) -> list[str]:
        """Requeue (or fail) live jobs whose heartbeat stopped; the ids handled."""
        before = utcnow() - timedelta(seconds=self.settings.worker_lost_after_s)
        with self.factory() as session:
            stale = lifecycle.stale_jobs(session, before)
        handled = []
        for job_id, attempt, lost in stale:
            if self.supervisor.current == (job_id, attempt):
                continue  # ours, and alive: the heartbeat is just late
            with transaction(self.factory) as session:
                status = lifecycle.reap_lost(session, job_id, attempt, lost,
                                             self.settings.max_attempts,
                                             self.settings.worker_lost_after_s)
                queue = session.get_one(Job, job_id).queue
            if status is None:
                continue
            log.warning("reaped job %s attempt %d: now %s", job_id, attempt, status)
            handled.append(job_id)
            if status == JobStatus.QUEUED.value:
                self.send_wake(job_id, queue)
        return handled

    def reconcile(self) -> list[str]:
        """While idle, re-send the wake-up of a job in our queues that waited too long."""
        if self.supervisor.current is not None or self.supervisor.shutdown.is_set():
            return []
        before = utcnow() - timedelta(seconds=self.settings.reconcile_after_s)
        with self.factory() as session:
            waiting = lifecycle.waiting_jobs(session, self.queues, before)
        if not waiting:
            return []
        job_id, queue = waiting[0]
        log.warning("job %s waited over %.0fs in queue %s with this worker idle; re-sending its "
                    "wake-up", job_id, self.settings.reconcile_after_s, queue)
        with transaction(self.factory) as session:
            lifecycle.add_event(session, job_id, "no worker picked the job up in time; its "
                                "wake-up was sent again")
        self.send_wake(job_id, queue)
        return [job_id]
