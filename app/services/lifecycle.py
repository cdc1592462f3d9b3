"""Every job state transition, as a compare-and-set update plus an event, in one place."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from app import models
from app.core.states import JobStatus
from app.models import EpochMetrics, Job, JobEvent, WorkerRecord, utcnow
from app.services import slots, webhooks

S = JobStatus

# from -> allowed targets. Anything else is a bug or a race lost, never done.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLING, S.QUEUED}),
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED, S.SUCCEEDED}),
    S.SUCCEEDED: frozenset({S.QUEUED}),  # only promote(): an ASHA trial trains on
    S.FAILED: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
}

# Runner-side writes are fenced by (status in LIVE, attempt): a runner whose
# attempt was superseded can no longer touch the job.
LIVE = models.LIVE
# "A live job" for a statement that reads many: the statuses rendered as literals, so
# both stores read ix_jobs_live (a partial index, which a parameter cannot match).
IS_LIVE = Job.status.in_(bindparam("live_statuses", list(LIVE), expanding=True,
                                   literal_execute=True))


class TransitionRejected(Exception):
    """The CAS found the job in another state (or another attempt) than expected."""


def add_event(session: Session, job_id: str, message: str, *, kind: str = "log", attempt: int = 0,
              data: dict[str, Any] | None = None, from_status: str | None = None,
              to_status: str | None = None) -> None:
    """Append one event to the job's history."""
    session.add(JobEvent(job_id=job_id, kind=kind, attempt=attempt, message=message, data=data,
                         from_status=from_status, to_status=to_status, ts=utcnow()))


def transition(session: Session, job_id: str, from_states: Iterable[JobStatus], to: JobStatus,
               reason: str, *, expect_attempt: int | None = None,
               data: dict[str, Any] | None = None, **values: Any) -> bool:
    """Move job_id to `to` if it is in one of from_states (and at expect_attempt); True if moved."""
    sources = [s for s in from_states if to in TRANSITIONS[s]]
    if not sources:
        raise ValueError(f"no legal transition from {list(from_states)} to {to}")
    current = session.execute(
        select(Job.status, Job.attempt).where(Job.id == job_id)
    ).one_or_none()
    if current is None:
        return False
    now = utcnow()
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_([s.value for s in sources]))
        .values(status=to.value, updated_at=now, **values)
    )
    if expect_attempt is not None:
        stmt = stmt.where(Job.attempt == expect_attempt)
    if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id, reason, kind="state", attempt=values.get("attempt", current.attempt),
              from_status=current.status, to_status=to.value, data=data)
    if to.value not in LIVE:  # it stopped running: its worker slots take other jobs
        slots.release(session, job_id)
    if to.is_terminal:  # in this transaction: an ended job's webhooks are never lost
        webhooks.job_ended(session, job_id, to.value)
    return True


def create_job(session: Session, job: Job) -> Job:
    """Insert a new queued job and its first event."""
    job.status = S.QUEUED.value
    session.add(job)
    session.flush()
    add_event(session, job.id, "job submitted", kind="state", to_status=S.QUEUED.value)
    return job


def claim(session: Session, job_id: str, worker: str) -> int | None:
    """queued -> running for this worker; the new attempt number, or None if someone else has it."""
    attempt = session.scalar(select(Job.attempt).where(Job.id == job_id))
    if attempt is None:
        return None
    now = utcnow()
    moved = transition(session, job_id, [S.QUEUED], S.RUNNING, f"claimed by {worker}",
                       expect_attempt=attempt, data={"worker": worker}, worker=worker,
                       started_at=now, heartbeat_at=now, attempt=attempt + 1,
                       error_type=None, error_message=None, finished_at=None)
    return attempt + 1 if moved else None


def heartbeat(session: Session, job_id: str, attempt: int) -> str | None:
    """Record that the attempt is alive; the job's status, or None if the attempt is superseded."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(LIVE))
        .values(heartbeat_at=utcnow())
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.scalar(select(Job.status).where(Job.id == job_id))


def succeed(session: Session, job_id: str, attempt: int, reason: str = "training finished") -> bool:
    """running -> succeeded."""
    return transition(session, job_id, [S.RUNNING, S.CANCELLING], S.SUCCEEDED, reason,
                      expect_attempt=attempt, finished_at=utcnow())


def fail(session: Session, job_id: str, attempt: int, error_type: str, message: str,
         data: dict[str, Any] | None = None) -> bool:
    """running -> failed, with the cause."""
    return transition(session, job_id, [S.RUNNING, S.CANCELLING], S.FAILED,
                      f"{error_type}: {message}", expect_attempt=attempt, data=data,
                      finished_at=utcnow(), error_type=error_type, error_message=message)


def record_epoch(session: Session, job_id: str, attempt: int, epoch: int, epochs: int,
                 values: dict[str, float], best: dict[str, Any] | None) -> bool:
    """Store one epoch's metrics (replacing a row a lost attempt wrote) and the job's progress."""
    moved = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(LIVE))
        .values(progress_epoch=epoch, progress_epochs=epochs, metrics=values, best=best,
                updated_at=utcnow(), heartbeat_at=utcnow())
    ).rowcount  # type: ignore[attr-defined]
    if moved != 1:
        return False
    row = session.get(EpochMetrics, (job_id, epoch))
    if row is None:
        session.add(EpochMetrics(job_id=job_id, epoch=epoch, values=values, attempt=attempt))
    else:
        row.values, row.attempt = values, attempt
    add_event(session, job_id, f"epoch {epoch}/{epochs}", kind="metrics", attempt=attempt,
              data={"epoch": epoch, **values})
    return True


def is_live(session: Session, job_id: str, attempt: int) -> bool:
    """Whether attempt still owns the job (the fencing check before a runner-side write)."""
    return session.scalar(
        select(Job.id).where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(LIVE))
    ) is not None



def claim_next(session: Session, queue: str, worker: str,
               lost_after_s: float = 30.0) -> tuple[str, int] | None:
    """Claim the most urgent queued job of queue that fits this worker's host: (job id,
    attempt), or None. A job needing N slots holds N free slots of the host, this worker's
    first, in this transaction, or the claim does not happen (app.services.slots: policy).

    A broker message only says "something waits in this queue"; which job runs
    next is decided here, by priority then age, so SQL order is the only order.
    """
    me = session.get(WorkerRecord, worker)
    if me is not None and me.held_by is not None:
        return None  # this slot already serves a (multi-slot) job
    skipped: set[str] = set()
    for _ in range(8):
        queued = [(j, n) for j, n in slots.queued_needs(session, queue, 8 + len(skipped))
                  if j not in skipped]
        fleet = slots.hosts(session, queue, lost_after_s)
        choice = slots.choose(worker, queued, fleet, me.hostname if me else None)
        if choice is None:
            return None
        job_id, names = choice
        savepoint = session.begin_nested()
        attempt = claim(session, job_id, worker)
        # An unregistered claimer (a test calling this directly) holds no slot rows.
        if attempt is not None and (me is None or slots.hold(session, job_id, names)):
            savepoint.commit()
            return job_id, attempt
        savepoint.rollback()
        if attempt is None:
            skipped.add(job_id)  # someone else claimed it
    return None


def request_cancel(session: Session, job_id: str) -> str | None:
    """Cancel: a queued job ends at once, a running one goes to cancelling; the new status.

    None when the job is already finished (the caller answers 409).
    """
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status == S.CANCELLING.value:
        return status
    if status == S.QUEUED.value and transition(
            session, job_id, [S.QUEUED], S.CANCELLED, "cancelled by the user before it started",
            finished_at=utcnow()):
        return S.CANCELLED.value
    if status == S.RUNNING.value and transition(
            session, job_id, [S.RUNNING], S.CANCELLING, "cancel requested by the user"):
        return S.CANCELLING.value
    return None


def finish_cancel(session: Session, job_id: str, attempt: int, how: str) -> bool:
    """cancelling -> cancelled once the runner has stopped."""
    return transition(session, job_id, [S.CANCELLING], S.CANCELLED, f"cancelled: {how}",
                      expect_attempt=attempt, finished_at=utcnow())


def retry(session: Session, job_id: str) -> bool:
    """failed or cancelled -> queued; the next run resumes from the last checkpoint."""
    return transition(session, job_id, [S.FAILED, S.CANCELLED], S.QUEUED,
                      "retry requested by the user; resumes from the last checkpoint",
                      finished_at=None, error_type=None, error_message=None, lost_attempts=0,
                      worker=None)


def promote(session: Session, job_id: str, epochs: int, spec: dict[str, Any],
            reason: str) -> bool:
    """succeeded -> queued with a larger epoch budget (an ASHA promotion); it resumes from its
    last checkpoint, which the finished run always writes at its last epoch."""
    return transition(session, job_id, [S.SUCCEEDED], S.QUEUED, reason, spec=spec,
                      progress_epochs=epochs, finished_at=None, error_type=None,
                      error_message=None, lost_attempts=0, worker=None)


def hand_back(session: Session, job_id: str, attempt: int, reason: str) -> bool:
    """running -> queued without using up an attempt (graceful worker shutdown)."""
    return transition(session, job_id, [S.RUNNING], S.QUEUED, f"handed back: {reason}",
                      expect_attempt=attempt, worker=None)


def reap_lost(session: Session, job_id: str, attempt: int, lost_attempts: int,
              max_attempts: int, silent_s: float) -> str | None:
    """A job whose worker stopped heartbeating: requeue it, or fail it after max_attempts losses.

    Returns the job's new status, or None if it had moved on meanwhile.
    """
    return _lose(session, job_id, attempt, lost_attempts, max_attempts,
                 f"worker lost: no heartbeat for {silent_s:.0f}s")


def lose(session: Session, job_id: str, attempt: int, max_attempts: int, why: str,
         data: dict[str, Any] | None = None) -> str | None:
    """An attempt lost for a reason other than a silent worker (a data-parallel rank died):
    requeue the job as reap_lost does; its new status, or None if it had moved on."""
    lost = session.scalar(select(Job.lost_attempts).where(Job.id == job_id))
    if lost is None:
        return None
    return _lose(session, job_id, attempt, lost, max_attempts, why, data)


def _lose(session: Session, job_id: str, attempt: int, lost_attempts: int, max_attempts: int,
          why: str, data: dict[str, Any] | None = None) -> str | None:
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status == S.CANCELLING.value:
        return S.CANCELLED.value if finish_cancel(session, job_id, attempt, why) else None
    if lost_attempts + 1 >= max_attempts:
        moved = fail(session, job_id, attempt, "worker_lost",
                     f"the job lost its worker {lost_attempts + 1} times (max_attempts is "
                     f"{max_attempts}); last: {why}", data)
        return S.FAILED.value if moved else None
    moved = transition(session, job_id, [S.RUNNING], S.QUEUED,
                       f"{why}; queued again to resume from its last checkpoint",
                       expect_attempt=attempt, data=data, worker=None,
                       lost_attempts=lost_attempts + 1)
    return S.QUEUED.value if moved else None


def stale_jobs(session: Session, before: datetime) -> list[tuple[str, int, int]]:
    """(id, attempt, lost_attempts) of live jobs whose last heartbeat is older than before."""
    rows = session.execute(
        select(Job.id, Job.attempt, Job.lost_attempts)
        .where(IS_LIVE, Job.heartbeat_at < before)).all()
    return [(r[0], r[1], r[2]) for r in rows]


def waiting_jobs(session: Session, queues: Iterable[str],
                 before: datetime) -> list[tuple[str, str]]:
    """(id, queue) of queued jobs whose last wake-up was sent before `before` (or never)."""
    rows = session.execute(
        select(Job.id, Job.queue).where(
            Job.status == S.QUEUED.value, Job.queue.in_(list(queues)),
            (Job.enqueued_at < before) | Job.enqueued_at.is_(None))
        .order_by(Job.priority.desc(), Job.created_at)).all()
    return [(r[0], r[1]) for r in rows]


def mark_enqueued(session: Session, job_id: str) -> None:
    """Remember that a wake-up for job_id was just sent."""
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
