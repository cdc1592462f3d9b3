"""The request's unit of work: one session, and the wake-ups to send once it has committed."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session


@dataclass(frozen=True)
class Wakeup:
    """A message telling a worker of queue that job_id waits."""

    job_id: str
    queue: str


@dataclass
class UnitOfWork:
    """A session that commits (or rolls back) as a whole; side effects wait for the commit.

    Services register wake-ups here instead of sending them: a worker woken
    before the commit would find no job, and a wake-up for a rolled-back job
    would announce one that never existed (polar's enqueue-after-commit).
    """

    session: Session
    wakeups: list[Wakeup] = field(default_factory=list)

    def wake_after_commit(self, job_id: str, queue: str) -> None:
        """Send a wake-up for job_id once (and only if) this unit of work commits."""
        self.wakeups.append(Wakeup(job_id, queue))
