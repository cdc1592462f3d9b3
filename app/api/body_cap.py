"""The request body cap: a body past max_bytes is a 413 before anything parses it.

Pure ASGI, outside every other middleware: it reads the body itself (at most
max_bytes of it, whether the client sent a Content-Length or a chunked body), then
hands the app the same messages. A route that streams a larger body under its own
cap (a dataset upload, spooled to disk) is exempt by path.
FastAPI's own max_body_size answers a Content-Length over the limit in plain text,
whatever the app's handlers say; this one answers in the API's error shape.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import PayloadTooLarge


class BodyCap:
    """Refuses a request body larger than max_bytes (413) unless its path streams its own."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt_paths: frozenset[str]) -> None:
        self.app, self.max_bytes, self.exempt_paths = app, max_bytes, exempt_paths

    def _too_large(self) -> JSONResponse:
        return JSONResponse(status_code=413, content={"error": PayloadTooLarge.code, "detail": (
            f"the request body is larger than {self.max_bytes} bytes, the most this service "
            "reads (TRAINERY_MAX_JSON_BODY_BYTES); datasets go to POST /v1/datasets")})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        framed = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                framed = True
                if value.isdigit() and int(value) > self.max_bytes:
                    await self._too_large()(scope, receive, send)
                    return
            elif name == b"transfer-encoding":
                framed = True
        if not framed:  # neither header: the request has no body (RFC 9112, 6.3), a poll's case
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client went away: the app sees that as it would have
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
