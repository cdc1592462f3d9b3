"""The event hub's reads: one per tick for a followed job, whatever its followers; a feed's
buffer answers followers after what it holds and sends older ones to the store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from app.api.followers import BUFFER, WAKE_BATCH, EventHub, Signal, Wakeups, read_after
from app.core.spec import JobSpec
from app.core.states import JobStatus
from app.db import async_reader, make_sessionmaker, reader, transaction
from app.services import jobs, lifecycle
from app.services.unit_of_work import UnitOfWork
from app.settings import Limits
from tests.specs import tiny_spec


def _running_job(factory: sessionmaker[Session]) -> tuple[str, int]:
    with transaction(factory) as session:
        job, _ = jobs.submit(UnitOfWork(session), JobSpec.model_validate(tiny_spec()),
                             owner="default", limits=Limits(), idempotency_key=None)
        session.flush()
        attempt = lifecycle.claim(session, job.id, "w1")
    assert attempt is not None
    return job.id, attempt


def _log(factory: sessionmaker[Session], job_id: str, attempt: int, n: int) -> None:
    with transaction(factory) as session:
        for i in range(n):
            lifecycle.add_event(session, job_id, f"line {i}", attempt=attempt)


def test_one_read_per_tick_and_the_buffer_bounds(factory: sessionmaker[Session]) -> None:
    job_id, attempt = _running_job(factory)
    _log(factory, job_id, attempt, BUFFER + 40)  # more history than a feed keeps
    with factory() as session:
        history = [f.id for f in read_after(session, job_id, 0)]
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    # The hub as the API makes it: a reader, on PostgreSQL on the async driver.
    bind = factory.kw["bind"]
    hub = EventHub(make_sessionmaker(reader(bind)),
                   async_engine=async_reader(bind.url.render_as_string(hide_password=False)))
    engine = hub.reads.engine
    event.listen(engine, "before_cursor_execute", count)

    async def scenario() -> None:
        try:
            await followed()
        finally:
            if hub.reads.async_engine is not None:  # closed in the loop that opened it
                await hub.reads.async_engine.dispose()

    async def followed() -> None:
        async with hub.follow(job_id) as feed, hub.follow(job_id) as same:
            assert feed is same and feed.since(0) is None  # not read yet
            await hub.tick(hub.feeds.values())
            reads = len(statements)
            # The latest BUFFER events are held; a follower from the start goes to the store.
            assert feed.covered_after is not None and feed.since(0) is None
            held = feed.since(feed.covered_after)
            assert held is not None and [f.id for f in held] == history[-BUFFER:]
            assert feed.since(history[-1]) == [] and not feed.finished

            signal = feed.signal
            _log(factory, job_id, attempt, 3)
            statements.clear()
            await hub.tick(hub.feeds.values())
            assert signal.is_set() and len(statements) <= reads  # one reading, two followers
            fresh = feed.since(history[-1])
            assert fresh is not None and len(fresh) == 3
            # The buffer stays bounded: the oldest held events are now the store's to give.
            assert len(feed.frames) == BUFFER and feed.covered_after > history[-BUFFER]

            with transaction(factory) as session:
                lifecycle.transition(session, job_id, [JobStatus.RUNNING], JobStatus.SUCCEEDED,
                                     "done", expect_attempt=attempt)
            await hub.tick(hub.feeds.values())
            assert feed.finished and feed.since(feed.last_id) == []
            statements.clear()
            await hub.tick(hub.feeds.values())
            assert statements == []  # a finished feed is not read again
        assert hub.feeds == {}  # the last follower out drops the feed

    try:
        asyncio.run(scenario())
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_a_signal_wakes_every_waiter_and_times_out_the_rest() -> None:
    """Set wakes all its waiters, more than one turn's batch of them; an unset signal's
    wait gives False after its timeout; a cancelled wait leaves nothing behind."""
    async def scenario() -> None:
        signal = Signal()
        waits = [asyncio.ensure_future(signal.wait(10)) for _ in range(3 * WAKE_BATCH + 7)]
        cancelled = asyncio.ensure_future(signal.wait(10))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        assert len(signal._waiters) == len(waits)
        signal.set()
        assert await asyncio.wait_for(asyncio.gather(*waits), 5) == [True] * len(waits)
        assert await signal.wait(10) is True  # already set: at once
        quiet = Signal()
        started = time.monotonic()
        assert await quiet.wait(0.05) is False
        assert time.monotonic() - started >= 0.04 and quiet._waiters == []

    asyncio.run(scenario())


def test_signals_of_one_hub_wake_their_followers_a_batch_a_turn_in_all() -> None:
    """Ten feeds changed by one tick wake WAKE_BATCH followers per turn of the event loop
    in all, not WAKE_BATCH of each, so polls get turns in between; all are woken."""
    async def scenario() -> None:
        wakeups = Wakeups()
        signals = [Signal(wakeups) for _ in range(10)]
        waits = [asyncio.ensure_future(s.wait(10)) for s in signals for _ in range(WAKE_BATCH)]
        await asyncio.sleep(0)
        for s in signals:
            s.set()
        woken = [sum(w.done() for w in waits)]
        while woken[-1] < len(waits):
            await asyncio.sleep(0)
            woken.append(sum(w.done() for w in waits))
        steps = [b - a for a, b in zip([0, *woken], woken, strict=False)]
        assert max(steps) <= WAKE_BATCH and len(woken) >= len(waits) // WAKE_BATCH, steps
        assert all(w.result() is True for w in waits)

    asyncio.run(scenario())
