"""Sending wake-ups after a commit, and remembering when, so lost ones can be re-sent."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from app.broker import send_wakeup
from app.db import transaction
from app.services import lifecycle
from app.services.unit_of_work import UnitOfWork, Wakeup
from app.settings import Settings

log = logging.getLogger(__name__)

BROKER_DOWN = ("the broker could not be reached; the job stays queued and a worker sends its "
               "wake-up again")


def send(celery: Celery, settings: Settings, wakeups: Iterable[Wakeup]) -> dict[str, bool]:
    """Send wake-ups for committed jobs (no transaction open meanwhile); job id -> sent."""
    return {w.job_id: send_wakeup(celery, settings, w.job_id, w.queue) for w in wakeups}


def record(session: Session, outcomes: dict[str, bool]) -> None:
    """Remember when each wake-up went out, or say in the job's events that it could not."""
    for job_id, sent in outcomes.items():
        if sent:
            lifecycle.mark_enqueued(session, job_id)
        else:
            lifecycle.add_event(session, job_id, BROKER_DOWN)


def wake(factory: sessionmaker[Session], celery: Celery, settings: Settings, job_id: str,
         queue: str) -> bool:
    """Send a wake-up for a committed queued job; False (and an event) if the broker is down."""
    outcomes = send(celery, settings, [Wakeup(job_id, queue)])
    with transaction(factory) as session:
        record(session, outcomes)
    return outcomes[job_id]


def commit_and_wake(uow: UnitOfWork, celery: Celery, settings: Settings) -> None:
    """Commit the unit of work, then send its wake-ups and record them; always closes it.

    Runs in one thread call, so no connection is held across a threadpool hop.
    Once the commit succeeded the request has succeeded: a failure sending or
    recording a wake-up is logged, and the job (queued, enqueued_at unset) is
    woken by a worker's reconciler instead.
    """
    try:
        uow.session.commit()
        if uow.wakeups:
            try:
                outcomes = send(celery, settings, uow.wakeups)
                record(uow.session, outcomes)
                uow.session.commit()
            except Exception:  # noqa: BLE001 - the job is committed; the reconciler re-wakes it
                log.exception("recording wake-ups for %s failed",
                              [w.job_id for w in uow.wakeups])
                uow.session.rollback()
    finally:
        uow.session.close()


def discard(uow: UnitOfWork) -> None:
    """Roll the unit of work back and close it; its wake-ups are never sent."""
    try:
        uow.session.rollback()
    finally:
        uow.session.close()
