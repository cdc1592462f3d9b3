"""The polls' own lane: GET /v1/jobs/{id} and GET /v1/jobs below FastAPI's routing.

A poll is the request clients send most, and half of its cost was the framework's,
not its read: finding the route among the app's ~50 (about a sixth of a poll's time)
and solving its dependencies (about a third), measured with cProfile by
bench/service.py's load. This middleware, the innermost, answers the two polls
itself: it matches their paths with their own routes' patterns, reads the caller's
Credential as the routes do, asks the same Polls (app/api/polls.py), and renders an
error with the app's own exception handler. Everything outside it (request ids, the
request line, metrics, security headers, the body cap) runs as for any request.

Only the plain case takes this lane; whatever else FastAPI would have to decide (a
query value it must validate, a repeated or empty parameter, another method) goes on
to the routes, which stay the documented contract (OpenAPI) and answer exactly as
this lane does: tests/unit/test_hot_reads.py sends the same requests both ways.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.credentials import credential
from app.api.polls import JobPoll, PagePoll, Poll
from app.api.routers import jobs

ExceptionHandler = Callable[[Request, Any], Response | Awaitable[Response]]
PAGE_PARAMETERS = frozenset({"status", "limit", "cursor"})


def route_of(endpoint: Callable[..., object]) -> APIRoute:
    """The jobs router's route for endpoint (the app includes that router as it is)."""
    for route in jobs.router.routes:
        if isinstance(route, APIRoute) and route.endpoint is endpoint:
            return route
    raise LookupError(f"no route for {endpoint.__name__}")


class HotReads:
    """Answers plain GET /v1/jobs/{id} and GET /v1/jobs; passes everything else on."""

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app, self.api = app, api
        self.job_route = route_of(jobs.get_job)
        self.page_route = route_of(jobs.list_jobs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        what: JobPoll | PagePoll | None = None
        if path == self.page_route.path:
            what = page_poll(scope["query_string"])
            route = self.page_route
        else:
            match = self.job_route.path_regex.match(path)
            if match is not None:
                what = JobPoll(match["job_id"])
                route = self.job_route
                scope["path_params"] = {"job_id": what.job_id}
        if what is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # for the request line and the metrics' route label
        request = Request(scope, receive)
        state = self.api.state
        try:
            who = credential(request, state.settings, authorization(scope))
            body = await state.polls.answer(Poll(who, what))
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        else:
            response = Response(body, media_type="application/json")
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> ExceptionHandler | None:
        """The app's handler for exc, as Starlette looks it up (the nearest class first)."""
        for cls in type(exc).__mro__:
            if cls in self.api.exception_handlers:
                handler: ExceptionHandler = self.api.exception_handlers[cls]
                return handler
        return None


def authorization(scope: Scope) -> str | None:
    """The Authorization header as the routes' APIKeyHeader reads it (empty: none)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.decode("latin-1") or None
    return None


def page_poll(query_string: bytes) -> PagePoll | None:
    """The page a plain query asks for; None for anything the route must validate."""
    if not query_string:
        return PagePoll(None, jobs.PAGE_LIMIT, None)
    params = QueryParams(query_string)
    items = params.multi_items()
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys) or any(not v for k, v in items if k in PAGE_PARAMETERS):
        return None
    limit = params.get("limit", str(jobs.PAGE_LIMIT))
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= jobs.PAGE_LIMIT_MAX:
        return None
    return PagePoll(params.get("status"), int(limit), params.get("cursor"))
