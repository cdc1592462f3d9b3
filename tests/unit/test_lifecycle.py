"""State transitions as compare-and-set updates, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.spec import JobSpec
from app.db import transaction
from app.models import EpochMetrics, Job, JobEvent, utcnow
from app.services import jobs as job_service
from app.services import lifecycle
from app.services.unit_of_work import UnitOfWork, Wakeup
from app.settings import Limits
from tests.specs import tiny_spec


def new_job(factory: sessionmaker[Session], **spec: object) -> str:
    with transaction(factory) as session:
        uow = UnitOfWork(session)
        job, created = job_service.submit(uow, JobSpec.model_validate(tiny_spec(**spec)),
                                          owner="o", limits=Limits(), idempotency_key=None)
        assert created
        assert uow.wakeups == [Wakeup(job.id, job.queue)]
        return job.id


def status(factory: sessionmaker[Session], job_id: str) -> tuple[str, int]:
    with factory() as session:
        job = session.get_one(Job, job_id)
        return job.status, job.attempt


def test_claim_is_exclusive(factory: sessionmaker[Session]) -> None:
    job_id = new_job(factory)
    with transaction(factory) as session:
        assert lifecycle.claim(session, job_id, "a") == 1
    with transaction(factory) as session:
        assert lifecycle.claim(session, job_id, "b") is None  # duplicate delivery
    assert status(factory, job_id) == ("running", 1)


def test_stale_attempt_cannot_write(factory: sessionmaker[Session]) -> None:
    job_id = new_job(factory)
    with transaction(factory) as session:
        lifecycle.claim(session, job_id, "a")
    with transaction(factory) as session:
        assert lifecycle.reap_lost(session, job_id, 1, 0, 3, 30) == "queued"
    with transaction(factory) as session:
        assert lifecycle.claim(session, job_id, "b") == 2
    with transaction(factory) as session:
        assert lifecycle.heartbeat(session, job_id, 1) is None
        assert not lifecycle.record_epoch(session, job_id, 1, 1, 2, {"loss": 1.0}, None)
        assert not lifecycle.succeed(session, job_id, 1)
        assert lifecycle.heartbeat(session, job_id, 2) == "running"
        assert lifecycle.record_epoch(session, job_id, 2, 1, 2, {"loss": 0.5}, None)
        assert lifecycle.succeed(session, job_id, 2)
    assert status(factory, job_id) == ("succeeded", 2)


def test_record_epoch_replaces_a_lost_attempts_row(factory: sessionmaker[Session]) -> None:
    job_id = new_job(factory)
    with transaction(factory) as session:
        lifecycle.claim(session, job_id, "a")
        lifecycle.record_epoch(session, job_id, 1, 1, 2, {"loss": 1.0}, None)
        lifecycle.reap_lost(session, job_id, 1, 0, 3, 30)
        lifecycle.claim(session, job_id, "b")
        lifecycle.record_epoch(session, job_id, 2, 1, 2, {"loss": 0.9}, None)
    with factory() as session:
        rows = session.scalars(select(EpochMetrics).where(EpochMetrics.job_id == job_id)).all()
        assert [(r.epoch, r.values["loss"], r.attempt) for r in rows] == [(1, 0.9, 2)]


def test_cancel_paths(factory: sessionmaker[Session]) -> None:
    queued = new_job(factory)
    with transaction(factory) as session:
        assert lifecycle.request_cancel(session, queued) == "cancelled"
        assert lifecycle.request_cancel(session, queued) is None
    running = new_job(factory)
    with transaction(factory) as session:
        lifecycle.claim(session, running, "a")
        assert lifecycle.request_cancel(session, running) == "cancelling"
        assert lifecycle.request_cancel(session, running) == "cancelling"
        assert lifecycle.finish_cancel(session, running, 1, "stopped")
        assert lifecycle.retry(session, running)
    assert status(factory, running) == ("queued", 1)


def test_worker_lost_until_max_attempts(factory: sessionmaker[Session]) -> None:
    job_id = new_job(factory)
    outcomes = []
    for attempt in (1, 2, 3):
        with transaction(factory) as session:
            assert lifecycle.claim(session, job_id, "w") == attempt
            lost = session.get_one(Job, job_id).lost_attempts
            outcomes.append(lifecycle.reap_lost(session, job_id, attempt, lost, 3, 30))
    assert outcomes == ["queued", "queued", "failed"]
    with factory() as session:
        job = session.get_one(Job, job_id)
        assert job.error_type == "worker_lost" and "3 times" in (job.error_message or "")


def test_hand_back_does_not_count_as_lost(factory: sessionmaker[Session]) -> None:
    job_id = new_job(factory)
    with transaction(factory) as session:
        lifecycle.claim(session, job_id, "w")
        assert lifecycle.hand_back(session, job_id, 1, "shutdown")
    with factory() as session:
        assert session.get_one(Job, job_id).lost_attempts == 0


def test_stale_jobs_and_waiting_jobs(factory: sessionmaker[Session]) -> None:
    job_id = new_job(factory)
    waiting = new_job(factory)
    with transaction(factory) as session:
        lifecycle.claim(session, job_id, "w")
    now = utcnow()
    with factory() as session:
        assert lifecycle.stale_jobs(session, now - timedelta(seconds=60)) == []
        assert [j for j, _, _ in
                lifecycle.stale_jobs(session, now + timedelta(seconds=1))] == [job_id]
        assert lifecycle.waiting_jobs(session, ["default"], now) == [(waiting, "default")]
    with transaction(factory) as session:
        lifecycle.mark_enqueued(session, waiting)
    with factory() as session:
        assert lifecycle.waiting_jobs(session, ["default"], now) == []


def test_claim_next_takes_priority_then_age(factory: sessionmaker[Session]) -> None:
    low = new_job(factory)
    high = new_job(factory, priority=5)
    with transaction(factory) as session:
        assert lifecycle.claim_next(session, "default", "w") == (high, 1)
        assert lifecycle.claim_next(session, "default", "w") == (low, 1)
        assert lifecycle.claim_next(session, "default", "w") is None


def test_every_transition_is_an_event(factory: sessionmaker[Session]) -> None:
    job_id = new_job(factory)
    with transaction(factory) as session:
        lifecycle.claim(session, job_id, "w")
        lifecycle.fail(session, job_id, 1, "user_error", "bad layers")
    with factory() as session:
        evs = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)
                              .order_by(JobEvent.id)).all()
        assert [(e.from_status, e.to_status) for e in evs] == [
            (None, "queued"), ("queued", "running"), ("running", "failed")]
        assert all(e.ts is not None for e in evs)
