"""Live event streams: one reader per API process for every followed job, fanning out.

Why: a follower that polls the store itself makes N followers cost N queries per
poll (500 open dashboards were 1,000 queries a second on a starved threadpool).
Here one task reads each followed job's new events and status once per tick, in
one short session for all of them (without a thread: app/api/loop_reads.py), and
wakes that job's followers: database reads per second depend on how many jobs are
followed, not on how many follow them.
A follower reads the store itself only to catch up: when it asks for history
older than its job's feed holds (a resume with Last-Event-ID, after=0 on a long
job) or when it fell further behind than the feed's buffer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session, sessionmaker

from app.api.loop_reads import LoopReads
from app.core.states import JobStatus
from app.models import Job, JobEvent
from app.schemas.jobs import EventPublic

log = logging.getLogger(__name__)

POLL_S = 0.25  # an event reaches its followers within about this, plus the read
# Frames a feed keeps for followers a little behind; older history comes from the store.
BUFFER = 256
# Events one read takes per job; the rest follow on the next read.
READ_LIMIT = 1000


@dataclass(frozen=True)
class Frame:
    """One event as its server-sent-events frame, formatted once for all followers."""

    id: int
    text: str


def to_frame(event: JobEvent) -> Frame:
    public = EventPublic.model_validate(event, from_attributes=True)
    return Frame(public.id, f"id: {public.id}\nevent: {public.kind}\n"
                            f"data: {public.model_dump_json()}\n\n")


def read_after(session: Session, job_id: str, after: int, limit: int = READ_LIMIT
               ) -> list[Frame]:
    """The job's frames after event id `after`, oldest first."""
    rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
                           .order_by(JobEvent.id).limit(limit))
    return [to_frame(e) for e in rows]


@dataclass
class Reading:
    """What one tick read for one feed."""

    frames: list[Frame]
    finished: bool
    covered_after: int | None = None  # set on a feed's first read


# Followers woken per turn of the event loop, whichever feeds changed. A poll needs a few
# turns (on PostgreSQL more: its round awaits the server), and each turn of a fan-out
# carries a batch: at 50, polls during 1,000 followers had a p99 of 62-88 ms on
# PostgreSQL; at 16, 49 ms (bench/service.py).
WAKE_BATCH = 16


class Wakeups:
    """The waiters to wake, WAKE_BATCH per turn of the event loop.

    A thousand followers woken in one turn would each send before the loop reads a
    socket again, and a poll arriving then would wait for all of them. One queue for all
    of a hub's feeds: a tick that changes ten feeds wakes their followers WAKE_BATCH a
    turn in all, not WAKE_BATCH of each feed (it woke 500 at once: turns of 35 ms, which
    polls meanwhile waited for).
    """

    def __init__(self) -> None:
        self._queue: deque[asyncio.Future[None]] = deque()
        self._scheduled = False

    def add(self, waiters: Iterable[asyncio.Future[None]]) -> None:
        self._queue.extend(waiters)
        if not self._scheduled:
            self._scheduled = True
            self._batch()

    def _batch(self) -> None:
        for _ in range(min(WAKE_BATCH, len(self._queue))):
            _wake(self._queue.popleft())
        # What is added before the next turn waits for it: one batch a turn, in all.
        asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        if self._queue:
            self._batch()
        else:
            self._scheduled = False


class Signal:
    """Set once, when a feed changes; its followers wait on it with a timeout.

    Not asyncio.Event with asyncio.wait_for: wait_for wraps each wait in a task of its
    own, and with a thousand followers woken together making those tasks was a fifth of
    the event loop's time (bench/service.py, SSE). Here a wait is one future and one timer.
    """

    def __init__(self, wakeups: Wakeups | None = None) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []
        self._wakeups = wakeups if wakeups is not None else Wakeups()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Wake every waiter, through the Wakeups this signal shares with its hub's others."""
        self._set = True
        waiters, self._waiters = self._waiters, []
        self._wakeups.add(waiters)

    async def wait(self, timeout_s: float) -> bool:
        """Whether the signal was set within timeout_s."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(timeout_s, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if not self._set:  # timed out or cancelled: set() did not take it
                self._waiters.remove(waiter)
        return self._set


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Feed:
    """The recent events of one job, and a signal its followers wait on."""

    def __init__(self, job_id: str, wakeups: Wakeups | None = None) -> None:
        self.job_id = job_id
        self.wakeups = wakeups if wakeups is not None else Wakeups()
        self.followers = 0
        self.frames: deque[Frame] = deque()
        # Every event of the job with a larger id is in frames; None until the first read.
        self.covered_after: int | None = None
        self.finished = False  # terminal, and every event up to it read
        self.signal = Signal(self.wakeups)

    @property
    def last_id(self) -> int:
        return self.frames[-1].id if self.frames else (self.covered_after or 0)

    def since(self, cursor: int) -> list[Frame] | None:
        """Frames after cursor; None when the feed cannot tell (not read yet, or cursor
        older than what it holds: the follower catches up from the store)."""
        if self.covered_after is None or cursor < self.covered_after:
            return None
        newer = []  # from the newest back: a follower is at most a few frames behind
        for frame in reversed(self.frames):
            if frame.id <= cursor:
                break
            newer.append(frame)
        newer.reverse()
        return newer

    def apply(self, reading: Reading) -> None:
        """Take one tick's reading and wake the followers if anything changed."""
        if reading.covered_after is not None:
            self.covered_after = reading.covered_after
        for frame in reading.frames:
            if len(self.frames) >= BUFFER:
                self.covered_after = self.frames.popleft().id
            self.frames.append(frame)
        changed = bool(reading.frames) or reading.finished != self.finished \
            or reading.covered_after is not None
        self.finished = reading.finished
        if changed:
            self.signal.set()
            self.signal = Signal(self.wakeups)


def read_feeds(session: Session, wanted: Sequence[tuple[str, int | None]]
               ) -> dict[str, Reading]:
    """One tick's reads: (job id, last id read or None at first)."""
    # Status first: a terminal status's events were committed with it or before it, so the
    # event reads that follow (each statement seeing what was committed when it ran) see
    # them all.
    statuses = dict(session.execute(
        select(Job.id, Job.status).where(Job.id.in_([j for j, _ in wanted]))).tuples().all())
    readings = {}
    for job_id, after in wanted:
        terminal = job_id not in statuses or JobStatus(statuses[job_id]).is_terminal
        if after is None:
            # The latest BUFFER events: followers after any of them need no read of their own.
            frames = list(reversed([to_frame(e) for e in session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id)
                .order_by(JobEvent.id.desc()).limit(BUFFER))]))
            covered = 0 if len(frames) < BUFFER else frames[0].id - 1
            readings[job_id] = Reading(frames, terminal, covered)
        else:
            frames = read_after(session, job_id, after)
            readings[job_id] = Reading(frames, terminal and len(frames) < READ_LIMIT)
    return readings


class EventHub:
    """The process's feeds, and the task that reads them each tick: without a thread
    (app/api/loop_reads.py), as the polls' rounds: a tick in the threadpool took turns at
    the GIL from the event loop while it served polls (bench/service.py, SSE)."""

    def __init__(self, factory: sessionmaker[Session], poll_s: float = POLL_S,
                 async_engine: AsyncEngine | None = None) -> None:
        self.reads = LoopReads(factory, async_engine)
        self.poll_s = poll_s
        self.feeds: dict[str, Feed] = {}
        self.wakeups = Wakeups()  # one queue of followers to wake for all the feeds
        self._task: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def follow(self, job_id: str) -> AsyncIterator[Feed]:
        """The job's feed, shared with its other followers for as long as the block runs."""
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = Feed(job_id, self.wakeups)
        feed.followers += 1
        try:
            yield feed
        finally:
            feed.followers -= 1
            if feed.followers == 0 and self.feeds.get(job_id) is feed:
                del self.feeds[job_id]

    def start(self) -> None:
        """Start reading (at start-up: the task then carries no request's log context)."""
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def close(self) -> None:
        """Stop reading (at shutdown, before the engine goes)."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            if self.feeds:
                await self.tick(self.feeds.values())
            # A tick every poll_s from the last one's start (at once after a slow one).
            await asyncio.sleep(max(0.0, started + self.poll_s - loop.time()))

    async def tick(self, feeds: Iterable[Feed]) -> None:
        """Read every unfinished feed once and wake the followers of those that changed."""
        live = [f for f in feeds if not f.finished]
        if not live:
            return
        wanted = [(f.job_id, None if f.covered_after is None else f.last_id) for f in live]
        try:
            readings = await self.reads.run(lambda session: read_feeds(session, wanted))
        except Exception:  # noqa: BLE001 - a store hiccup: followers keep waiting, next tick retries
            log.exception("reading %d followed jobs failed", len(wanted))
            return
        for feed in live:
            feed.apply(readings[feed.job_id])


async def wait(signal: Signal, timeout_s: float) -> bool:
    """Whether signal was set within timeout_s."""
    return await signal.wait(timeout_s)
