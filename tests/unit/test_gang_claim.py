"""Gang claims of multi-slot jobs (app/services/slots.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import Job, WorkerRecord
from app.services import lifecycle, slots
from app.services import workers as worker_service
from tests.unit.test_lifecycle import new_job


def add_slots(factory: sessionmaker[Session], host: str, count: int) -> list[str]:
    names = [f"{host}{i}" for i in range(count)]
    with transaction(factory) as session:
        for i, name in enumerate(names):
            worker_service.register(session, name=name, hostname=host, pid=i, device="cpu",
                                    gpu_name=None, queues=["gpu", "default"], state="ready")
    return names


def gpu_job(factory: sessionmaker[Session], gpus: int) -> str:
    return new_job(factory, resources={"gpus": gpus})


def claim(factory: sessionmaker[Session], worker: str) -> str | None:
    with transaction(factory) as session:
        claimed = lifecycle.claim_next(session, "gpu", worker)
    return claimed[0] if claimed else None


def holders(factory: sessionmaker[Session]) -> dict[str, str | None]:
    with factory() as session:
        return dict(session.execute(select(WorkerRecord.name, WorkerRecord.held_by)).tuples().all())


def reason(factory: sessionmaker[Session], job_id: str) -> str:
    with factory() as session:
        job = session.get_one(Job, job_id)
        return worker_service.pending_reasons(session, [job], 30)[job_id]


def finish(factory: sessionmaker[Session], job_id: str) -> None:
    with transaction(factory) as session:
        assert lifecycle.succeed(session, job_id, 1)


def test_two_2_slot_jobs_and_a_1_slot_job_on_3_slots(factory: sessionmaker[Session]) -> None:
    a0, a1, a2 = add_slots(factory, "a", 3)
    first, second, small = gpu_job(factory, 2), gpu_job(factory, 2), gpu_job(factory, 1)
    assert claim(factory, a1) == first
    assert holders(factory) == {a0: first, a1: first, a2: None}  # both, in one transaction
    assert claim(factory, a0) is None  # held by first
    # The second 2-slot job heads the queue: the free slot waits for it (no starvation).
    assert claim(factory, a2) is None
    assert reason(factory, second) == "needs 2 free GPUs on one host; hosts: a (1 of 3 free)"
    with factory() as session:
        shown = {w.name: w.current_job for w in worker_service.live(session, 30)}
    assert shown == {a0: first, a1: first, a2: None}
    finish(factory, first)
    assert holders(factory) == {a0: None, a1: None, a2: None}
    assert claim(factory, a2) == second
    assert claim(factory, a1) == small
    assert holders(factory) == {a0: second, a1: small, a2: second}


def test_a_job_no_host_can_fit_blocks_nobody(factory: sessionmaker[Session]) -> None:
    add_slots(factory, "a", 2)
    add_slots(factory, "b", 1)
    big, small = gpu_job(factory, 3), gpu_job(factory, 1)
    assert claim(factory, "a0") == small
    assert reason(factory, big) == ("needs 3 GPUs on one host; no live host serving queue gpu "
                                    "has that many: a (1 of 2 free), b (1 of 1 free)")


def test_the_reservation_goes_to_the_host_with_most_free_slots(
        factory: sessionmaker[Session]) -> None:
    add_slots(factory, "a", 2)
    add_slots(factory, "b", 4)
    busy = [gpu_job(factory, 1) for _ in range(4)]
    for worker in ("b0", "b1", "b2", "a0"):
        assert claim(factory, worker) in busy
    pair, single = gpu_job(factory, 2), gpu_job(factory, 1)
    # a has 1 free, b 1 free: a (by name) keeps its slot for the pair; b's goes on.
    assert claim(factory, "a1") is None
    assert claim(factory, "b3") == single
    assert reason(factory, pair) == ("needs 2 free GPUs on one host; hosts: a (1 of 2 free), "
                                     "b (0 of 4 free)")


def test_a_lost_job_frees_its_slots_and_a_taken_slot_fails_the_hold(
        factory: sessionmaker[Session]) -> None:
    add_slots(factory, "a", 2)
    pair = gpu_job(factory, 2)
    assert claim(factory, "a0") == pair
    with transaction(factory) as session:
        assert not slots.hold(session, "job_other", ["a0", "a1"])
    with transaction(factory) as session:
        assert lifecycle.reap_lost(session, pair, 1, 0, 3, 30) == "queued"
    assert holders(factory) == {"a0": None, "a1": None}
    assert claim(factory, "a1") == pair
    assert holders(factory) == {"a0": pair, "a1": pair}
