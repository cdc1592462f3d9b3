"""The I/O a plan asks for, and the stepper that drives a plan: no I/O of its own.

A *plan* is a generator written once in `_base_client`: it yields effects (send this
request, sleep this long, give me the next line) and is sent each effect's outcome back,
or has the effect's exception thrown in. `Client` performs the effects with blocking httpx,
`AsyncClient` awaits them; each effect says how to do both, so neither client branches on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


class Effect:
    """One piece of I/O: `run` does it blocking, `arun` awaited."""

    def run(self, http: httpx.Client) -> Any:
        raise NotImplementedError

    async def arun(self, http: httpx.AsyncClient) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Send(Effect):
    """Send a request; the response (its body still unread when `stream`)."""

    request: httpx.Request
    stream: bool = False

    def run(self, http: httpx.Client) -> httpx.Response:
        return http.send(self.request, stream=self.stream)

    async def arun(self, http: httpx.AsyncClient) -> httpx.Response:
        return await http.send(self.request, stream=self.stream)


@dataclass(frozen=True)
class Sleep(Effect):
    """Wait before the next try."""

    seconds: float

    def run(self, http: httpx.Client) -> None:
        time.sleep(self.seconds)

    async def arun(self, http: httpx.AsyncClient) -> None:
        await asyncio.sleep(self.seconds)


@dataclass(frozen=True)
class ReadBody(Effect):
    """Read a streamed response's whole body (an error's, to map it)."""

    response: httpx.Response

    def run(self, http: httpx.Client) -> bytes:
        return self.response.read()

    async def arun(self, http: httpx.AsyncClient) -> bytes:
        return await self.response.aread()


@dataclass(frozen=True)
class Reader(Effect):
    """Start reading a streamed response, by lines or in `chunk_size` byte chunks; for `Next`."""

    response: httpx.Response
    chunk_size: int | None = None

    def run(self, http: httpx.Client) -> Any:
        if self.chunk_size is None:
            return self.response.iter_lines()
        return self.response.iter_bytes(self.chunk_size)

    async def arun(self, http: httpx.AsyncClient) -> Any:
        if self.chunk_size is None:
            return self.response.aiter_lines()
        return self.response.aiter_bytes(self.chunk_size)


@dataclass(frozen=True)
class Next(Effect):
    """The next line or chunk of a `Reader`; None at its end."""

    source: Any

    def run(self, http: httpx.Client) -> Any:
        return next(self.source, None)

    async def arun(self, http: httpx.AsyncClient) -> Any:
        return await anext(self.source, None)


@dataclass(frozen=True)
class Close(Effect):
    """Release a streamed response's connection."""

    response: httpx.Response

    def run(self, http: httpx.Client) -> None:
        self.response.close()

    async def arun(self, http: httpx.AsyncClient) -> None:
        await self.response.aclose()


@dataclass(frozen=True)
class Emit(Effect):
    """Not I/O: an item for the caller of an iterating call (`list`, `follow`)."""

    item: Any


Plan = Generator[Effect, Any, T]


class PlanRunner:
    """Steps one plan: iterating gives its effects; `settle`/`fail` answer the last one.

    It remembers the streamed responses the plan has not closed, so the client can close
    them when the plan ends early (an error, Ctrl-C, a caller that stops iterating).
    """

    def __init__(self, plan: Plan[Any]) -> None:
        self.plan = plan
        self.result: Any = None
        self.open: list[httpx.Response] = []
        self._outcome: Any = None
        self._error: Exception | None = None

    def __iter__(self) -> PlanRunner:
        return self

    def __next__(self) -> Effect:
        outcome, error = self._outcome, self._error
        self._outcome, self._error = None, None
        try:
            effect = self.plan.throw(error) if error is not None else self.plan.send(outcome)
        except StopIteration as stop:
            self.result = stop.value
            raise StopIteration from None
        if isinstance(effect, Close) and effect.response in self.open:
            self.open.remove(effect.response)
        return effect

    def settle(self, effect: Effect, outcome: Any) -> None:
        """The effect's outcome, sent into the plan at the next step."""
        self._outcome = outcome
        if isinstance(effect, Send) and effect.stream:
            self.open.append(outcome)

    def fail(self, error: Exception) -> None:
        """The effect's exception, raised inside the plan at the next step."""
        self._error = error

    def stop(self) -> list[httpx.Response]:
        """End the plan (no-op once it returned); the responses left for the client to close."""
        self.plan.close()
        left, self.open = self.open, []
        return left
