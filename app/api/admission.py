"""Admission control: how many requests may hold a database session at once, and the line.

Why: a route's unit of work holds a pooled connection from the moment it first
touches the database until its commit, and between those it hops threadpool
threads (auth, the endpoint, the commit each run on whatever thread is free).
With more requests inside than the pool has connections, every thread can end
up waiting for a connection while every connection's owner waits for a thread
to finish on: a deadlock that lasts until the pool's timeout (fastapi#3205).
Admitting at most `slots` requests, slots <= the pool size while the pool has
as many again in overflow for short sessions, means an admitted request always
finds a connection; the rest wait here, on the event loop, holding nothing but
their socket. The line is bounded in length and in time: past either, 503 with
Retry-After, decided before any work, so a refused POST created nothing.

The same gate caps dataset conversions (parsing an upload holds its arrays in
memory): at most TRAINERY_MAX_CONVERSIONS at once, so memory is bounded by that
many times what one upload may unpack to, however many arrive together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from app.core.errors import ServiceBusy


class Admission:
    """A counting gate with a bounded line in front of it."""

    def __init__(self, slots: int, max_wait_s: float, max_queued: int,
                 retry_after_s: int, what: str = "database slot") -> None:
        self.slots, self.what = slots, what
        self._gate = anyio.Semaphore(slots)
        self._max_wait_s = max_wait_s
        self._max_queued = max_queued
        self._retry_after_s = retry_after_s
        self.waiting = 0

    def _busy(self, why: str) -> ServiceBusy:
        return ServiceBusy(f"the service is busy ({why}); retry after {self._retry_after_s} s",
                           retry_after_s=self._retry_after_s)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the with; ServiceBusy if the line is too long or slow."""
        if self.waiting >= self._max_queued:
            raise self._busy(f"{self.waiting} requests already wait")
        self.waiting += 1
        acquired = False
        try:
            with anyio.move_on_after(self._max_wait_s):
                await self._gate.acquire()
                acquired = True
        finally:
            self.waiting -= 1
        if not acquired:
            raise self._busy(f"no {self.what} came free within {self._max_wait_s:g} s")
        try:
            yield
        finally:
            self._gate.release()
