"""Plain domain errors a service raises, and the field-path helpers for 422 details.

The API maps them to HTTP in app/api/errors.py; workers import them without FastAPI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from app.core.spec import layer_tags
from app.core.strict import FIELD_MARK


class DomainError(Exception):
    """Base for errors a service raises; status and code say how the API answers."""

    status_code = 400
    code = "bad_request"

    def __init__(self, detail: Any) -> None:
        super().__init__(detail)
        self.detail = detail


class UserError(Exception):
    """The spec or the data cannot train: the user must change something (a runner's
    user_error; the shapes in app/core/modelspec.py raise it)."""


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class WebhookNotFound(NotFound):
    code = "webhook_not_found"


class Unauthorized(DomainError):
    status_code = 401
    code = "unauthorized"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class ModelNotReady(Conflict):
    code = "model_not_ready"


class PayloadTooLarge(DomainError):
    """An upload, or what it unpacks to, is over a size limit."""

    status_code = 413
    code = "payload_too_large"


class ExportUnavailable(NotFound):
    """The trained model has no export in the asked format; detail says why."""

    code = "export_unavailable"


class ServiceBusy(DomainError):
    """Too many requests wait for the database; the client should retry after retry_after_s."""

    status_code = 503
    code = "service_busy"

    def __init__(self, detail: Any, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class InvalidInput(DomainError):
    """A request that parsed but cannot be served; detail lists the offending fields."""

    status_code = 422
    code = "validation_error"


def format_path(loc: Sequence[str | int]) -> str:
    """('model', 'layers', 0, 'units') -> 'model.layers[0].units'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "$"


def problem(loc: Sequence[str | int], message: str, kind: str = "value_error") -> dict[str, Any]:
    """One entry of a 422's detail list."""
    return {"path": format_path(loc), "loc": list(loc), "message": message, "type": kind}


def _strip_union_tags(loc: Sequence[Any]) -> list[str | int]:
    # A discriminated union adds the tag value to the path: layers.0.conv2d.filters.
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if (i > 0 and isinstance(loc[i - 1], int) and isinstance(part, str) and i + 1 < len(loc)
                and part in _LAYER_TAGS):
            continue
        out.append(part)
    return out


_LAYER_TAGS = layer_tags()


def validation_problems(errors: Iterable[Any],
                        strip_prefix: str | None = None) -> list[dict[str, Any]]:
    """Pydantic errors -> our detail list, with field paths and readable messages."""
    problems = []
    for err in errors:
        loc = list(err.get("loc", ()))
        if strip_prefix and loc and loc[0] == strip_prefix:
            loc = loc[1:]
        message = str(err.get("msg", "invalid"))
        message = message.removeprefix("Value error, ")
        if message.startswith(FIELD_MARK):
            field, _, message = message[1:].partition(FIELD_MARK)
            loc = [*loc, *(int(p) if p.isdigit() else p for p in field.split("."))]
        loc = _strip_union_tags(loc)
        if err.get("type") == "extra_forbidden":
            message = "unknown field; remove it (check the spelling against the spec reference)"
        elif err.get("type") == "missing":
            message = "this field is required"
        problems.append(problem(loc, message, str(err.get("type", "value_error"))))
    return problems
