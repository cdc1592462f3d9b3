"""Polls share reads (app/api/polls.py): concurrent polls are answered by one round of
statements, each poll only with what its owner may see, never staler than the poll,
and an error stays with the poll it belongs to."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from app.api.admission import Admission
from app.api.credentials import Credential
from app.api.polls import PAGES_MAX, JobPoll, PagePoll, Poll, Polls
from app.core.errors import InvalidInput, JobNotFound, ServiceBusy, Unauthorized
from app.core.spec import JobSpec
from app.db import async_reader, make_sessionmaker, reader
from app.services import jobs as job_service
from app.services import keys, lifecycle
from app.services.jobs import PublicCache
from app.services.unit_of_work import UnitOfWork
from app.services.workers import FleetSnapshot
from app.settings import Limits, Settings
from tests.specs import tiny_spec


def _as(owner: str) -> Credential:
    return Credential(None, bearer=False, fallback=owner)


def _submit(factory: sessionmaker[Session], owner: str, name: str) -> str:
    with factory.begin() as session:
        spec = JobSpec.model_validate(tiny_spec(name=name))
        job, _ = job_service.submit(UnitOfWork(session), spec, owner=owner, limits=Limits(),
                                    idempotency_key=None)
        return job.id


def _polls(engine: Engine, tmp_path: Path, cls: type[Polls] = Polls,
           admission: Admission | None = None, **settings: Any) -> Polls:
    """Polls as the API makes them: on PostgreSQL with the async driver, on SQLite inline."""
    s = Settings(data_dir=tmp_path, **settings)
    # The fleet (for pending reasons) is read once here, then kept: statements counted
    # below are the polls' own.
    return cls(make_sessionmaker(reader(engine)), admission or Admission(2, 5.0, 100, 1), s,
               FleetSnapshot(s.worker_lost_after_s, max_age_s=3600), PublicCache(100),
               async_reader(engine.url.render_as_string(hide_password=False)))


def _gather(polls: Polls, asked: list[Poll]) -> list[Any]:
    """Every poll of asked at once, as concurrent requests send them: answers or errors."""
    async def run() -> list[Any]:
        try:
            return await asyncio.gather(*(polls.answer(p) for p in asked),
                                        return_exceptions=True)
        finally:
            await _closed(polls)
    return asyncio.run(run())


async def _closed(polls: Polls) -> None:
    """Close the async engine's connections in the loop that opened them."""
    if polls.async_engine is not None:
        await polls.async_engine.dispose()


@contextmanager
def statements(polls: Polls) -> Iterator[list[str]]:
    """The statements the rounds run in the block."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    counted = polls.engine
    event.listen(counted, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(counted, "before_cursor_execute", count)


def test_concurrent_polls_of_many_jobs_are_one_statement(
        engine: Engine, factory: sessionmaker[Session], tmp_path: Path) -> None:
    """64 polls sent together, of 32 jobs of two owners: one statement reads them all;
    each poll gets its own job, and a job of another owner is not found for it, even when
    its owner's poll of the same job is in the same round."""
    jobs = {owner: [_submit(factory, owner, f"{owner}-{i}") for i in range(16)]
            for owner in ("alice", "bob")}
    asked = [Poll(_as(owner), JobPoll(job_id)) for owner, ids in jobs.items() for job_id in ids]
    asked += [Poll(_as("bob"), JobPoll(job_id)) for job_id in jobs["alice"]]
    polls = _polls(engine, tmp_path)
    _gather(polls, asked[:1])
    with statements(polls) as seen:
        answers = _gather(polls, asked)
    assert len(seen) == 1, seen
    for poll, answer in zip(asked, answers, strict=True):
        owned = poll.what.job_id in jobs[poll.who.fallback]  # type: ignore[union-attr]
        if owned:
            assert json.loads(answer)["id"] == poll.what.job_id  # type: ignore[union-attr]
        else:
            assert isinstance(answer, JobNotFound), answer


def test_a_poll_sees_every_write_committed_before_it(
        engine: Engine, factory: sessionmaker[Session], tmp_path: Path) -> None:
    """A poll sent while a round is between its read and its answers waits for the next
    round: the write its client saw committed (its own cancel, say) is in its answer."""
    job_id = _submit(factory, "alice", "watched")

    class HeldPolls(Polls):
        read_done: asyncio.Event
        release: asyncio.Event

        async def _read_round(self, polls: list[Poll]) -> dict[Poll, Any]:
            answers = await super()._read_round(polls)
            if not self.read_done.is_set():  # the first round: hold it after its read
                self.read_done.set()
                await self.release.wait()
            return answers

    polls = _polls(engine, tmp_path, HeldPolls)
    poll = Poll(_as("alice"), JobPoll(job_id))

    async def run() -> tuple[bytes, bytes]:
        polls.read_done, polls.release = asyncio.Event(), asyncio.Event()
        first = asyncio.ensure_future(polls.answer(poll))
        await asyncio.wait_for(polls.read_done.wait(), 10)
        with factory.begin() as session:  # committed while the first round is in flight
            assert job_service.cancel(session, job_id, "alice") == "cancelled"
        second = asyncio.ensure_future(polls.answer(poll))
        await asyncio.sleep(0.05)
        polls.release.set()
        answers = await first, await second
        await _closed(polls)
        return answers

    before, after = asyncio.run(run())
    assert json.loads(before)["status"] == "queued"
    assert json.loads(after)["status"] == "cancelled"


def test_errors_stay_with_their_poll(engine: Engine, factory: sessionmaker[Session],
                                     tmp_path: Path) -> None:
    """In one round: a bad cursor is a 422 for its poll, an unknown key a 401, a missing job
    a 404; a live key acts as its owner; every other poll is answered, and the keys cost
    one statement for the round."""
    job_id = _submit(factory, "alice", "mine")
    with factory.begin() as session:
        _, token = keys.create(session, "alice", "laptop")
    key = Credential(token, bearer=True, fallback=None)
    asked = [Poll(_as("alice"), PagePoll(None, 10, "not-a-cursor")),
             Poll(Credential("trn_unknown", bearer=True, fallback=None), JobPoll(job_id)),
             Poll(_as("alice"), JobPoll("job_nope")),
             Poll(key, JobPoll(job_id)),
             Poll(key, PagePoll(None, 10, None)),
             Poll(Credential(None, bearer=False, fallback=None), JobPoll(job_id))]
    polls = _polls(engine, tmp_path)
    _gather(polls, [Poll(_as("alice"), JobPoll(job_id))])
    with statements(polls) as seen:
        bad_cursor, unknown_key, missing, by_key, page, no_key = _gather(polls, asked)
    assert isinstance(bad_cursor, InvalidInput)
    assert isinstance(unknown_key, Unauthorized) and "unknown or revoked" in str(unknown_key)
    assert isinstance(missing, JobNotFound)
    assert json.loads(by_key)["id"] == job_id
    assert [j["id"] for j in json.loads(page)["data"]] == [job_id]
    assert isinstance(no_key, Unauthorized) and "needs an API key" in str(no_key)
    key_reads = [s for s in seen if "api_keys" in s]
    assert len(key_reads) == 1, seen


def test_a_round_that_cannot_start_answers_busy_and_the_next_one_runs(
        engine: Engine, factory: sessionmaker[Session], tmp_path: Path) -> None:
    """No database slot within the admission wait: 503 with Retry-After for the round's
    polls; once a slot is free, polls are answered again."""
    job_id = _submit(factory, "alice", "busy")
    admission = Admission(1, 0.2, 100, 7)
    polls = _polls(engine, tmp_path, admission=admission)
    poll = Poll(_as("alice"), JobPoll(job_id))

    async def run() -> tuple[list[Any], bytes]:
        async with admission.slot():  # every slot held elsewhere
            refused = await asyncio.gather(polls.answer(poll), polls.answer(poll),
                                           return_exceptions=True)
        answered = await polls.answer(poll)
        await _closed(polls)
        return refused, answered

    refused, answered = asyncio.run(run())
    assert all(isinstance(r, ServiceBusy) and r.retry_after_s == 7 for r in refused), refused
    assert json.loads(answered)["id"] == job_id


def test_the_line_of_polls_is_bounded_and_a_cancelled_poll_harms_none(
        engine: Engine, factory: sessionmaker[Session], tmp_path: Path) -> None:
    """Past TRAINERY_API_QUEUE_MAX polls waiting for the next round, 503 at once; a poll
    whose client went away is dropped and the rest of its round is answered."""
    job_id = _submit(factory, "alice", "line")

    class HeldPolls(Polls):
        started: asyncio.Event
        release: asyncio.Event

        async def _read_round(self, polls: list[Poll]) -> dict[Poll, Any]:
            if not self.started.is_set():  # the first round: hold it before its read
                self.started.set()
                await self.release.wait()
            return await super()._read_round(polls)

    polls = _polls(engine, tmp_path, HeldPolls, api_queue_max=3, api_retry_after_s=4)
    poll = Poll(_as("alice"), JobPoll(job_id))

    async def run() -> list[Any]:
        polls.started, polls.release = asyncio.Event(), asyncio.Event()
        first = asyncio.ensure_future(polls.answer(poll))
        await asyncio.wait_for(polls.started.wait(), 10)
        waiting = [asyncio.ensure_future(polls.answer(poll)) for _ in range(3)]
        await asyncio.sleep(0.01)
        with pytest.raises(ServiceBusy) as busy:
            await polls.answer(poll)
        assert busy.value.retry_after_s == 4
        waiting[0].cancel()
        polls.release.set()
        answers = await asyncio.gather(first, *waiting, return_exceptions=True)
        await _closed(polls)
        return answers

    first, cancelled, *rest = asyncio.run(run())
    assert isinstance(cancelled, asyncio.CancelledError)
    assert all(json.loads(a)["id"] == job_id for a in (first, *rest))


def test_a_lone_poll_reads_at_once(engine: Engine, factory: sessionmaker[Session],
                                   tmp_path: Path) -> None:
    """With no round running, a poll starts one: sequential polls each read afresh."""
    job_id = _submit(factory, "alice", "alone")
    polls = _polls(engine, tmp_path)
    poll = Poll(_as("alice"), JobPoll(job_id))

    async def run() -> list[str]:
        seen = [json.loads(await polls.answer(poll))["status"]]
        with factory.begin() as session:
            lifecycle.claim(session, job_id, "w1")
        seen.append(json.loads(await polls.answer(poll))["status"])
        await _closed(polls)
        return seen

    assert asyncio.run(run()) == ["queued", "running"]


def test_a_round_reads_a_few_pages_and_the_rest_wait_for_the_next(
        engine: Engine, factory: sessionmaker[Session], tmp_path: Path) -> None:
    """A page is milliseconds of work: a round reads at most PAGES_MAX distinct ones (so
    a round on the event loop stays short), with every job poll; the others are read by
    the rounds after, and every poll is answered."""
    job_id = _submit(factory, "alice", "paged")
    pages = [Poll(_as("alice"), PagePoll(None, limit, None)) for limit in range(1, 3 * PAGES_MAX)]
    asked = [*pages, Poll(_as("alice"), JobPoll(job_id))]
    rounds: list[list[Poll]] = []

    class CountedPolls(Polls):
        def _read_in(self, session: Session, polls: list[Poll]) -> dict[Poll, Any]:
            rounds.append(polls)
            return super()._read_in(session, polls)

    answers = _gather(_polls(engine, tmp_path, CountedPolls), asked)
    assert all(json.loads(a)["data"][0]["id"] == job_id for a in answers[:-1]), answers
    assert json.loads(answers[-1])["id"] == job_id
    assert len(rounds) == 3 and all(
        sum(isinstance(p.what, PagePoll) for p in r) <= PAGES_MAX for r in rounds), rounds
    assert asked[-1] in rounds[0]  # a job poll does not wait behind the pages


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_round_on_a_connection_the_server_dropped_reads_again_on_a_fresh_one(
        engine: Engine, factory: sessionmaker[Session], tmp_path: Path) -> None:
    """Rounds ping no connection before they use it (a round trip per round): when the
    server has dropped the pooled one (a restart), the round reads once more on a new
    connection, and its polls are answered as if nothing happened."""
    job_id = _submit(factory, "alice", "kept")
    polls = _polls(engine, tmp_path)
    asked = Poll(_as("alice"), JobPoll(job_id))
    assert polls.async_engine is not None

    async def run() -> tuple[bytes, bytes]:
        try:
            first = await polls.answer(asked)
            with engine.connect() as conn:  # every other connection to this database
                dropped = conn.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
            assert dropped, "the round's connection was not in the pool"
            return first, await polls.answer(asked)
        finally:
            await _closed(polls)

    first, again = asyncio.run(run())
    assert json.loads(first)["id"] == json.loads(again)["id"] == job_id
