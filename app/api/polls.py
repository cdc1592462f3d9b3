"""Polls share reads: the polls that arrive while a read runs are all answered by the next.

A poll (GET /v1/jobs/{id}, GET /v1/jobs) is the service's most frequent request, and
most of its cost is not the statement but getting to it: a threadpool hop, a pooled
connection checked out and in, a statement sent and its rows described, each paid
per request (the GIL makes the hop dearer the busier the event loop is). Here an API
process reads for its polls in rounds: a poll that finds no round running starts one
at once; polls that arrive while one runs wait for the next, which reads for all of
them on one connection: the API keys they carry in one statement, the jobs they ask
for in one statement (each job serialized once, however many ask for it), and each
distinct page once. Under load a round serves dozens of polls; alone, a poll costs
what it did before. A round runs without a thread (app/api/loop_reads.py): on
PostgreSQL on the async driver, on SQLite on the event loop.

Never staler than its own read: a round starts after every poll it answers arrived,
so a poll sees every write committed before it was sent (a client's own cancel, say).
Admission (app/api/admission.py) gates the rounds, one slot each; the polls waiting
for the next round are bounded by TRAINERY_API_QUEUE_MAX (503 with Retry-After past
it), and a round reads at most ROUND_MAX polls and PAGES_MAX pages, the rest waiting
for the one after.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session, sessionmaker

from app.api.admission import Admission
from app.api.credentials import Credential
from app.api.loop_reads import LoopReads
from app.core.errors import DomainError, JobNotFound, ServiceBusy
from app.schemas.jobs import JobsPublic
from app.services import jobs as job_service
from app.services import keys
from app.services.jobs import PublicCache
from app.services.workers import FleetSnapshot
from app.settings import Settings

ROUND_MAX = 500  # distinct polls one round reads for (at most this many answers in memory)
PAGES_MAX = 4  # distinct pages one round reads (a page is ms of work: rounds stay short)


@dataclass(frozen=True)
class JobPoll:
    """GET /v1/jobs/{job_id}."""

    job_id: str


@dataclass(frozen=True)
class PagePoll:
    """GET /v1/jobs?status=&limit=&cursor=."""

    status: str | None
    limit: int
    cursor: str | None


@dataclass(frozen=True)
class Poll:
    """What one request asks, as who: equal polls in a round are read once."""

    who: Credential
    what: JobPoll | PagePoll


Answer = bytes | Exception


class Polls:
    """An API process's rounds of reads for its polls."""

    def __init__(self, factory: sessionmaker[Session], admission: Admission,
                 settings: Settings, fleet: FleetSnapshot, job_cache: PublicCache,
                 async_engine: AsyncEngine | None = None) -> None:
        self.admission, self.settings = admission, settings
        self.reads = LoopReads(factory, async_engine)
        self.fleet, self.job_cache = fleet, job_cache
        self._next: dict[Poll, list[asyncio.Future[bytes]]] = {}
        self._waiting = 0
        self._round: asyncio.Task[None] | None = None

    @property
    def async_engine(self) -> AsyncEngine | None:
        return self.reads.async_engine

    @property
    def engine(self) -> Engine:
        """The engine whose events see the rounds' statements (metrics, tests)."""
        return self.reads.engine

    async def answer(self, poll: Poll) -> bytes:
        """The JSON answer to poll, read by a round that starts after this call."""
        if self._waiting >= self.settings.api_queue_max:
            raise ServiceBusy(f"the service is busy ({self._waiting} polls already wait); "
                              f"retry after {self.settings.api_retry_after_s} s",
                              retry_after_s=self.settings.api_retry_after_s)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._next.setdefault(poll, []).append(future)
        self._waiting += 1
        if self._round is None:
            self._round = asyncio.create_task(self._rounds())
        return await future

    async def _rounds(self) -> None:
        try:
            while self._next:
                polls = self._take()
                waiters = {poll: self._next.pop(poll) for poll in polls}
                self._waiting -= sum(len(w) for w in waiters.values())
                try:
                    async with self.admission.slot():
                        answers = await self._read_round(polls)
                except Exception as exc:  # the round failed: each of its polls answers so
                    answers = dict.fromkeys(polls, exc)
                for poll, futures in waiters.items():
                    answer = answers[poll]
                    for future in futures:
                        if future.done():  # its request was cancelled
                            continue
                        if isinstance(answer, Exception):
                            future.set_exception(answer)
                        else:
                            future.set_result(answer)
        finally:
            self._round = None

    def _take(self) -> list[Poll]:
        """The next round's polls: at most ROUND_MAX, of which at most PAGES_MAX pages."""
        polls: list[Poll] = []
        pages = 0
        for poll in self._next:
            if isinstance(poll.what, PagePoll):
                if pages == PAGES_MAX:
                    continue
                pages += 1
            polls.append(poll)
            if len(polls) == ROUND_MAX:
                break
        return polls

    async def _read_round(self, polls: list[Poll]) -> dict[Poll, Answer]:
        """Without a thread (app/api/loop_reads.py): a round's reads cost less than the
        hop, and than the thread's turns at the GIL while the event loop is busy."""
        return await self.reads.run(lambda session: self._read_in(session, polls))

    def _read_in(self, session: Session, polls: list[Poll]) -> dict[Poll, Answer]:
        """One round: every poll's answer, or the error it answers with."""
        answers: dict[Poll, Answer] = {}
        owners = keys.owners_for(session, {p.who.key for p in polls if p.who.key})
        asked: dict[Poll, str] = {}
        for poll in polls:
            try:
                asked[poll] = poll.who.owner(owners.get)
            except DomainError as exc:  # a 401 is that poll's answer
                answers[poll] = exc
        job_ids = {p.what.job_id for p in asked if isinstance(p.what, JobPoll)}
        shown = self._jobs(session, job_ids)
        pages: dict[tuple[str, PagePoll], Answer] = {}
        for poll, owner in asked.items():
            what = poll.what
            if isinstance(what, JobPoll):
                found = shown.get(what.job_id)
                answers[poll] = (found[1] if found is not None and found[0] == owner
                                 else JobNotFound(f"no job with id {what.job_id!r}"))
            else:
                if (owner, what) not in pages:
                    pages[owner, what] = self._page(session, owner, what)
                answers[poll] = pages[owner, what]
        return answers

    def _jobs(self, session: Session, job_ids: set[str]) -> dict[str, tuple[str, bytes]]:
        """Each job's owner and JSON, serialized once for all who asked."""
        rows = list(job_service.read_jobs(session, job_ids).values())
        public = job_service.to_public_page(session, rows, self.settings.worker_lost_after_s,
                                            self.fleet)
        return {row.id: (row.owner, job.model_dump_json().encode())
                for row, job in zip(rows, public, strict=True)}

    def _page(self, session: Session, owner: str, what: PagePoll) -> Answer:
        try:
            page, next_cursor = job_service.list_jobs(
                session, owner, status=what.status, limit=what.limit, cursor=what.cursor,
                columns=job_service.PAGE_COLUMNS)
            data = job_service.public_page(session, page, self.job_cache,
                                           self.settings.worker_lost_after_s, self.fleet)
        except DomainError as exc:  # a bad cursor is that poll's answer
            return exc
        return JobsPublic(data=data, next_cursor=next_cursor).model_dump_json().encode()
