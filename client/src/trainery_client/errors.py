"""Typed exceptions for what the API answers, carrying the server's `error` and `detail`."""

from __future__ import annotations

from typing import Any

import httpx


class TraineryError(Exception):
    """Base of every error the SDK raises; `error` and `detail` come from the server."""

    def __init__(self, message: str, *, status_code: int | None = None, error: str = "error",
                 detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.detail = detail


class BadRequest(TraineryError):
    """400: the request could not be served as sent."""


class AuthenticationFailed(TraineryError):
    """401 or 403: the token is missing, wrong or not allowed to do this."""


class NotFound(TraineryError):
    """404: no such job, dataset, model export or endpoint."""


class Conflict(TraineryError):
    """409: the request clashes with the job's current state."""


class InvalidTransition(Conflict):
    """409 invalid_transition: e.g. cancelling a finished job or retrying a running one."""


class ModelNotReady(Conflict):
    """409 model_not_ready: the model exists once the job has succeeded."""


class IdempotencyKeyReused(Conflict):
    """409 idempotency_key_reused: the key was first used with a different spec."""


class ValidationFailed(TraineryError):
    """422: the spec (or a parameter) is invalid; `problems` lists every offending field."""

    @property
    def problems(self) -> list[dict[str, Any]]:
        """The offending fields: dicts with `path` and `message`."""
        if not isinstance(self.detail, list):
            return []
        return [p for p in self.detail if isinstance(p, dict)]


class ServerError(TraineryError):
    """5xx: the service failed or is unavailable."""


class ConnectionFailed(TraineryError):
    """The server could not be reached (after the retries the call allows)."""


class ChecksumMismatch(TraineryError):
    """A downloaded file's sha256 differs from the one the API promised."""


class WaitTimeout(TraineryError, TimeoutError):
    """wait() gave up before the job reached a terminal state."""


_BY_CODE: dict[str, type[TraineryError]] = {
    "invalid_transition": InvalidTransition,
    "model_not_ready": ModelNotReady,
    "idempotency_key_reused": IdempotencyKeyReused,
}
_BY_STATUS: dict[int, type[TraineryError]] = {
    400: BadRequest, 401: AuthenticationFailed, 403: AuthenticationFailed, 404: NotFound,
    409: Conflict, 422: ValidationFailed,
}


def describe_detail(detail: Any) -> str:
    """A server `detail` as one readable line (a 422's list becomes `path: message; ...`)."""
    if isinstance(detail, list):
        parts = [f"{p.get('path', '?')}: {p.get('message', p)}" if isinstance(p, dict) else str(p)
                 for p in detail]
        return "; ".join(parts)
    if detail is None:
        return ""
    return str(detail)


def error_from_response(response: httpx.Response) -> TraineryError:
    """The typed exception for an error response; the body must have been read."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        code, detail = str(body["error"]), body.get("detail")
    else:
        code, detail = "http_error", response.text[:1000] or response.reason_phrase
    status = response.status_code
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else TraineryError
    message = f"{status} {code}"
    if text := describe_detail(detail):
        message += f": {text}"
    return cls(message, status_code=status, error=code, detail=detail)
