"""Worker slots: which slots of one host a job takes (gang claim), and why a job waits.

A slot is one worker process (one GPU, or one CPU slot of `trainery worker --cpu-slots
N`); a job needs `max(1, resources.gpus)` of them on one host. The claim holds them all
in the claim's transaction (`workers.held_by`, one conditional update per slot, in name
order so that two claims never wait on each other's rows in a cycle) or none.

Policy (first fit with a head reservation): the queued jobs are looked at in queue
order (priority, then age). The first job whose slots are free on the claiming
worker's host is claimed. The first multi-slot job that does not fit *reserves* the
free slots of the host with the most free ones (among hosts big enough for it): a
worker of that host claims nothing behind it, so a stream of 1-slot jobs cannot starve
it, while workers of other hosts go on taking smaller jobs. A job bigger than every
live host reserves nothing (it waits, saying so).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import Job, WorkerRecord, utcnow


def needed(spec: dict[str, Any]) -> int:
    """How many slots a job's spec takes: its GPUs, and one for a CPU job."""
    return max(1, int(spec.get("resources", {}).get("gpus", 0)))


@dataclass
class Host:
    """The live, ready slots of one host that serve a queue."""

    name: str
    slots: list[str] = field(default_factory=list)
    free: list[str] = field(default_factory=list)


def hosts(session: Session, queue: str, lost_after_s: float) -> dict[str, Host]:
    """Each host's live ready slots serving queue, and which of them are free."""
    since = utcnow() - timedelta(seconds=lost_after_s)
    rows = session.execute(
        select(WorkerRecord.name, WorkerRecord.hostname, WorkerRecord.queues,
               WorkerRecord.held_by)
        .where(WorkerRecord.heartbeat_at >= since, WorkerRecord.state == "ready")
        .order_by(WorkerRecord.name)).all()
    out: dict[str, Host] = {}
    for name, hostname, queues, held_by in rows:
        if queue not in queues:
            continue
        host = out.setdefault(hostname, Host(hostname))
        host.slots.append(name)
        if held_by is None:
            host.free.append(name)
    return out


def reserving_host(need: int, fleet: dict[str, Host]) -> str | None:
    """The host a blocked multi-slot job keeps free slots on: the one with the most free
    slots among those with at least `need` slots (ties: by name); None if none is big enough."""
    big = [h for h in fleet.values() if len(h.slots) >= need]
    if not big:
        return None
    return min(big, key=lambda h: (-len(h.free), h.name)).name


def choose(worker: str, queued: Iterable[tuple[str, int]], fleet: dict[str, Host],
           my_host: str | None) -> tuple[str, list[str]] | None:
    """The job this worker claims and the slots it holds (itself first), or None.

    queued is (job id, slots needed) in queue order; the worker is free (the caller checked).
    """
    host = fleet.get(my_host) if my_host is not None else None
    mine = [worker] + [s for s in (host.free if host else []) if s != worker]
    reserved = False
    for job_id, need in queued:
        if need <= len(mine):
            return job_id, mine[:need]
        if need > 1 and not reserved:
            reserved = True
            if my_host is not None and reserving_host(need, fleet) == my_host:
                return None  # this host's free slots wait for that job
    return None


def hold(session: Session, job_id: str, names: list[str]) -> bool:
    """Hold every slot in names for job_id, or none (False: one was taken meanwhile)."""
    for name in sorted(names):  # one lock order for every claimer: no deadlock
        moved = session.execute(
            update(WorkerRecord).where(WorkerRecord.name == name, WorkerRecord.held_by.is_(None))
            .values(held_by=job_id)).rowcount  # type: ignore[attr-defined]
        if moved != 1:
            return False
    return True


def release(session: Session, job_id: str) -> None:
    """Free every slot job_id holds (it stopped running)."""
    session.execute(update(WorkerRecord).where(WorkerRecord.held_by == job_id)
                    .values(held_by=None))


def held(session: Session, job_id: str, leader: str) -> list[WorkerRecord]:
    """The slots job_id holds, its leader (the claiming worker) first."""
    rows = list(session.scalars(select(WorkerRecord).where(WorkerRecord.held_by == job_id)
                                .order_by(WorkerRecord.name)))
    return sorted(rows, key=lambda w: w.name != leader)


def queued_needs(session: Session, queue: str, limit: int) -> list[tuple[str, int]]:
    """(job id, slots needed) of the first `limit` queued jobs of queue, in queue order."""
    rows = session.execute(
        select(Job.id, Job.spec).where(Job.queue == queue, Job.status == "queued")
        .order_by(Job.priority.desc(), Job.created_at, Job.id).limit(limit)).all()
    return [(job_id, needed(spec)) for job_id, spec in rows]


def gang_reason(need: int, queue: str, fleet: dict[str, Host]) -> str:
    """Why a multi-slot job waits: the free slots of every live host of its queue."""
    kind = "GPUs" if queue.startswith("gpu") else "slots"
    listing = ", ".join(f"{h.name} ({len(h.free)} of {len(h.slots)} free)"
                        for h in sorted(fleet.values(), key=lambda h: h.name))
    if not fleet:
        return f"needs {need} free {kind} on one host; no live worker serves queue {queue}"
    if all(len(h.slots) < need for h in fleet.values()):
        return (f"needs {need} {kind} on one host; no live host serving queue {queue} has "
                f"that many: {listing}")
    return f"needs {need} free {kind} on one host; hosts: {listing}"
