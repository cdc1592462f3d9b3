"""Reads the event loop awaits without a thread: the polls' rounds and the followers' ticks.

A read in the threadpool costs a hop each way and, while the event loop is busy, turns
at the GIL: the thread holds it while its driver works, up to the switch interval (5 ms)
at a time, and every request in flight waits meanwhile. The reads that run under load
(app/api/polls.py, app/api/followers.py) are a statement or a few each, so they run
where they wait least: on PostgreSQL on psycopg's async driver (SQLAlchemy runs the
read's ORM code in a greenlet on the loop, and the loop serves requests while the server
answers), on SQLite on the loop itself (index reads of a local file; in WAL a read never
waits on a writer). Anything else, in the threadpool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")


class LoopReads:
    """Runs read(session) on a session of factory's store, without a thread where it can."""

    def __init__(self, factory: sessionmaker[Session], async_engine: AsyncEngine | None = None
                 ) -> None:
        self.factory, self.async_engine = factory, async_engine
        bind = factory.kw["bind"]
        self.inline = async_engine is None and bind.dialect.name == "sqlite"
        # The engine whose events see the statements (metrics, tests).
        self.engine: Engine = async_engine.sync_engine if async_engine is not None else bind

    async def run(self, read: Callable[[Session], T]) -> T:
        """read's result; on PostgreSQL, read once more on a fresh connection when the
        server had dropped the pooled one (the pool pings none: a round trip a read)."""
        if self.async_engine is not None:
            try:
                async with AsyncSession(self.async_engine) as session:
                    return await session.run_sync(read)
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
            # A restart, an idle timeout: the pool has discarded that connection and its
            # like, and a read is safe to send again, once.
            async with AsyncSession(self.async_engine) as session:
                return await session.run_sync(read)
        if self.inline:
            return self._read(read)
        return await run_in_threadpool(self._read, read)

    def _read(self, read: Callable[[Session], T]) -> T:
        with self.factory() as session:
            return read(session)
