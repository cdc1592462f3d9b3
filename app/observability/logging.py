"""Structured logs: one JSON object a line (or the console format on a terminal), with
the request, job, attempt and worker the line belongs to.

The context lives in contextvars, so it follows a request through the API's threads
and tasks and a wake-up through the worker; a request's id travels to the worker in
the wake-up message (app.broker.send_wakeup).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TextIO

import orjson

if TYPE_CHECKING:  # workers import this module too; they need no FastAPI
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

FIELDS = ("request_id", "job_id", "attempt", "worker")
_context: dict[str, ContextVar[Any]] = {name: ContextVar(name, default=None) for name in FIELDS}
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()
# A caller's id is kept only if it is short and plain (it goes into every line).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# LogRecord's own attributes: everything else on a record is an extra field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def current(name: str) -> Any:
    """The value of one context field (None outside any)."""
    return _context[name].get()


def update(**fields: Any) -> None:
    """Set context fields for the rest of this context (a claimed job, its attempt)."""
    for name, value in fields.items():
        _context[name].set(value)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Context fields for the duration of a block; whatever was set inside is undone."""
    tokens = {name: _context[name].set(_context[name].get()) for name in FIELDS}
    update(**fields)
    try:
        yield
    finally:
        for name, token in tokens.items():
            _context[name].reset(token)


class ContextFilter(logging.Filter):
    """Copies the context fields onto each record (a handler filter: every logger's lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in FIELDS:
            if not hasattr(record, name):
                setattr(record, name, _context[name].get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, event, the context, any extras."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        try:  # orjson: a line a request, a fifth of the request line's cost with json
            return orjson.dumps(line, default=str).decode()
        except TypeError:  # what orjson refuses (an integer past 64 bits)
            return json.dumps(line, default=str)


class ConsoleFormatter(logging.Formatter):
    """The human format: time, level, message, then the context that is set."""

    def __init__(self, component: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)-7s {component} %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(f"{n}={getattr(record, n)}" for n in FIELDS
                           if getattr(record, n, None) is not None)
        return f"{text} [{context}]" if context else text


class TurnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that, once attached to an event loop, writes the lines that loop's
    thread logs in one turn together, at the start of the next turn: one write for the
    dozens of request lines a busy turn makes (a write a line was about a third of the
    request line's cost, measured under bench/service.py's poll load). A line logged at
    WARNING or above, or from another thread, is written at once, after any that wait,
    so lines keep their order; detaching writes what waits."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: int | None = None
        self.waiting: list[str] = []

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Batch the lines logged on loop's thread (call it from that thread)."""
        with self.lock:  # type: ignore[union-attr]
            self.loop, self.thread = loop, threading.get_ident()

    def detach(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self.loop = self.thread = None
            self._write_waiting()

    def emit(self, record: logging.LogRecord) -> None:  # called under self.lock
        try:
            line = self.format(record) + self.terminator
        except Exception:  # noqa: BLE001 - as StreamHandler: report, never raise
            self.handleError(record)
            return
        batched = (self.loop is not None and record.levelno < logging.WARNING
                   and threading.get_ident() == self.thread)
        if batched and not self.waiting:
            self.loop.call_soon(self._next_turn)  # type: ignore[union-attr]
        self.waiting.append(line)
        if not batched:
            self._write_waiting()

    def _next_turn(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_waiting()

    def _write_waiting(self) -> None:
        if not self.waiting:
            return
        text = "".join(self.waiting)
        self.waiting.clear()
        try:
            self.stream.write(text)
            self.flush()
        except Exception:  # noqa: BLE001 - a closed or full stream loses lines, not requests
            self.handleError(logging.makeLogRecord({"msg": "a batch of log lines"}))


@contextmanager
def lines_per_turn(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """While the block runs, root's TurnHandlers batch the lines loop's thread logs."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, TurnHandler)]
    for handler in handlers:
        handler.attach(loop)
    try:
        yield
    finally:
        for handler in handlers:
            handler.detach()


def resolve_format(setting: str, stream: TextIO | None = None) -> str:
    """auto: the console format on a terminal, JSON otherwise (a service, a container)."""
    if setting != "auto":
        return setting
    return "console" if (stream or sys.stderr).isatty() else "json"


def configure_logging(component: str, fmt: str = "auto", level: int = logging.INFO,
                      stream: TextIO | None = None) -> None:
    """Route every logger of this process through one handler in the chosen format, to
    stream (stderr by default)."""
    stream = stream or sys.stderr
    # No formatter here prints where a line was logged from, or its thread or process:
    # skip computing them for every record (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = TurnHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter(component) if resolve_format(fmt, stream) == "json"
                         else ConsoleFormatter(component))
    root = logging.getLogger()
    for old in list(root.handlers):
        # Plain stream handlers (basicConfig's, ours from before) would print every line
        # twice; others (a test runner's capture) stay.
        if type(old) in (logging.StreamHandler, TurnHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's and Celery's own handlers would print a second, unstructured copy.
    for name in ("uvicorn", "uvicorn.error", "celery", "celery.worker", "celery.app.trace"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # replaced by the "request" line


class RequestContext:
    """X-Request-ID (or a new id) on every request, its response and every line it causes,
    and one "request" line per request with its duration (to the response's start).

    Pure ASGI rather than Starlette's BaseHTTPMiddleware, which runs the app in a task
    of its own and copies every response through a stream: a measured share of a
    small request's cost (bench/service.py).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger("trainery.api")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"]
                      if k == _REQUEST_ID_KEY), "")
        # A new id is 128 random bits from the process's generator, not os.urandom: an id
        # to find a request's lines by, never a secret (a system call a request was a
        # fortieth of a poll's cost).
        request_id = given if _REQUEST_ID.match(given) else f"{random.getrandbits(128):032x}"
        started = time.perf_counter()
        status = 500
        logged = False

        def log_line() -> None:
            nonlocal logged
            logged = True
            route = getattr(scope.get("route"), "path", None)
            self.log.info("request", extra={
                "method": scope["method"], "path": scope["path"], "route": route,
                "status": status, "duration_s": round(time.perf_counter() - started, 6)})

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (_REQUEST_ID_KEY, request_id.encode("latin-1"))]
                log_line()
            await send(message)

        # The request's own id only: an API request sets no other context field.
        token = _context["request_id"].set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if not logged:  # the app failed before it answered
                log_line()
            _context["request_id"].reset(token)


def install_request_ids(app: FastAPI) -> None:
    """Mount RequestContext on app."""
    app.add_middleware(RequestContext)
