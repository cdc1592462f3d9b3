"""The fleet as SQL sees it: worker registration, heartbeats, and routing of jobs to queues."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, ScalarSelect, case, func, select, tuple_, update
from sqlalchemy.orm import Session

from app.core.spec import JobSpec
from app.core.states import JobStatus
from app.models import Job, WorkerRecord, utcnow
from app.services import lifecycle, slots

GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "default"
# What a viewer sees as the current job of a worker that runs someone else's job.
BUSY = "busy"


def route(spec: JobSpec) -> str:
    """The queue a job waits in: its named pool, else gpu for GPU jobs, else default."""
    if spec.resources.queue:
        return spec.resources.queue
    return GPU_QUEUE if spec.resources.gpus >= 1 else DEFAULT_QUEUE


def register(session: Session, *, name: str, hostname: str, pid: int, device: str,
             gpu_name: str | None, queues: list[str], state: str, detail: str = "",
             slot_device: str = "") -> None:
    """Insert or refresh this worker's row (a slot a live job holds stays held)."""
    row = session.get(WorkerRecord, name)
    now = utcnow()
    if row is None:
        row = WorkerRecord(name=name)
        session.add(row)
    row.hostname, row.pid, row.device, row.gpu_name = hostname, pid, device, gpu_name
    row.queues, row.state, row.detail, row.slot_device = queues, state, detail, slot_device
    row.current_job, row.started_at, row.heartbeat_at = None, now, now
    if row.held_by is not None and session.scalar(
            select(Job.id).where(Job.id == row.held_by, Job.status.in_(lifecycle.LIVE))) is None:
        row.held_by = None  # a holder that no longer runs must not keep the slot forever


def beat(session: Session, name: str, current_job: str | None, state: str | None = None) -> None:
    values: dict[str, Any] = {"heartbeat_at": utcnow(), "current_job": current_job}
    if state is not None:
        values["state"] = state
    session.execute(update(WorkerRecord).where(WorkerRecord.name == name).values(**values))


def live(session: Session, lost_after_s: float, viewer: str | None = None) -> list[WorkerRecord]:
    """Workers that reported within lost_after_s and have not stopped, with their current job.

    The current job is the claim's (the slot's holder, or the job the worker runs), not
    the worker's last heartbeat, so it is right from the moment a job is claimed, and
    every slot a multi-slot job holds shows that job. Given a viewer, a job of another
    owner shows only as BUSY: job ids are the keys to a job's pages, and one owner never
    learns another's.
    """
    since = utcnow() - timedelta(seconds=lost_after_s)
    rows = list(session.scalars(
        select(WorkerRecord).where(WorkerRecord.heartbeat_at >= since,
                                   WorkerRecord.state != "stopped")
        .order_by(WorkerRecord.name)))
    running = {worker: job_id if viewer is None or owner == viewer else BUSY
               for worker, job_id, owner in session.execute(
                   select(Job.worker, Job.id, Job.owner)
                   .where(lifecycle.IS_LIVE,
                          Job.worker.in_([w.name for w in rows]))).tuples()}
    for w in rows:
        session.expunge(w)  # a read model: never written back
        w.current_job = w.held_by or running.get(w.name)
    return rows


class FleetSnapshot:
    """The live fleet as one process last read it, read again once it is max_age_s old.

    Pending reasons need the fleet on every poll of a queued job; the fleet
    changes at heartbeat pace, so an API process shares one reading among all
    the polls of a second instead of two statements each. Thread-safe enough:
    two threads that find it stale both read, and either reading is kept.
    """

    def __init__(self, lost_after_s: float, max_age_s: float = 1.0) -> None:
        self.lost_after_s = lost_after_s
        self.max_age_s = max_age_s
        self._reading: tuple[float, list[WorkerRecord]] | None = None

    def __call__(self, session: Session) -> list[WorkerRecord]:
        now = time.monotonic()
        if self._reading is None or now - self._reading[0] > self.max_age_s:
            self._reading = (now, live(session, self.lost_after_s))
        return self._reading[1]


# How many queued jobs are ahead of a queued job in its queue (queue order: priority,
# then age, then id), as a column of a select over jobs, NULL for a job not queued: two
# index range counts over ix_jobs_queue_position (higher priority; same priority and
# older), so it costs the same at 1k or 100k jobs in the store.
_JOBS = Job.__table__
_OTHER = _JOBS.alias("other")


def _count_queued(*where: ColumnElement[bool]) -> ScalarSelect[int]:
    return (select(func.count()).select_from(_OTHER)
            .where(_OTHER.c.status == JobStatus.QUEUED.value, _OTHER.c.queue == _JOBS.c.queue,
                   *where)
            .scalar_subquery())


AHEAD = case((_JOBS.c.status == JobStatus.QUEUED.value,
              _count_queued(_OTHER.c.priority > _JOBS.c.priority)
              + _count_queued(_OTHER.c.priority == _JOBS.c.priority,
                              tuple_(_OTHER.c.created_at, _OTHER.c.id)
                              < tuple_(_JOBS.c.created_at, _JOBS.c.id)))).label("ahead")


class QueuedView(Protocol):
    """What a pending reason needs of a job: a row of a select with AHEAD."""

    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def spec(self) -> dict[str, Any]: ...
    @property
    def ahead(self) -> int | None: ...


def pending_reasons(session: Session, jobs: Sequence[QueuedView], lost_after_s: float,
                    fleet: Callable[[Session], list[WorkerRecord]] | None = None
                    ) -> dict[str, str]:
    """Why each queued job of jobs waits, in words a person can act on.

    The jobs' own select counted the jobs ahead of each (AHEAD); this reads the live
    fleet once (or fleet, a FleetSnapshot, gives it; and once per queue with
    multi-slot jobs, their hosts' free slots): a page of 50 costs what a page of 1 does.
    """
    queued = [j for j in jobs if j.status == JobStatus.QUEUED.value]
    if not queued:
        return {}
    workers = fleet(session) if fleet is not None else live(session, lost_after_s)
    reasons = {}
    hosts: dict[str, dict[str, slots.Host]] = {}  # per queue: one more statement for gangs
    for j in queued:
        need = slots.needed(j.spec)
        if need > 1:
            if j.queue not in hosts:
                hosts[j.queue] = slots.hosts(session, j.queue, lost_after_s)
            reasons[j.id] = slots.gang_reason(need, j.queue, hosts[j.queue])
        else:
            reasons[j.id] = _reason(j.queue, j.ahead or 0, workers)
    return reasons


def _reason(queue: str, ahead: int, fleet: list[WorkerRecord]) -> str:
    serving = [w for w in fleet if queue in w.queues]
    ready = [w for w in serving if w.state == "ready"]
    if not ready:
        broken = f" ({len(serving)} failed their device check)" if serving else ""
        return f"no live worker serves queue {queue}{broken}"
    busy = sum(1 for w in ready if w.current_job)
    kind = "GPU" if queue.startswith(GPU_QUEUE) else "CPU/GPU"
    if busy < len(ready):
        return (f"{ahead} job(s) ahead in queue {queue}; "
                f"{len(ready) - busy} of {len(ready)} {kind} workers idle, starting soon")
    state = "busy" if len(ready) == 1 else "all busy"
    return f"{ahead} job(s) ahead in queue {queue}; {len(ready)} {kind} worker(s), {state}"
