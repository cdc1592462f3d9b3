"""Sending wake-ups after a commit, and remembering when, so lost ones can be re-sent."""

from __future__ import annotations

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from app.broker import send_wakeup
from app.db import transaction
from app.services import lifecycle
from app.settings import Settings


def wake(factory: sessionmaker[Session], celery: Celery, settings: Settings, job_id: str,
         queue: str) -> bool:
    """Send a wake-up for a committed queued job; False (and an event) if the broker is down."""
    sent = send_wakeup(celery, settings, job_id, queue)
    with transaction(factory) as session:
        if sent:
            lifecycle.mark_enqueued(session, job_id)
        else:
            lifecycle.add_event(session, job_id, "the broker could not be reached; the job stays "
                                "queued and a worker sends its wake-up again")
    return sent
