"""The one place that turns domain errors into HTTP responses {"error", "detail"}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import DomainError, ServiceBusy, validation_problems
from app.schemas.errors import ErrorPublic, ValidationErrorPublic
from app.settings import Settings

# What each status means on this API, for the OpenAPI document; every body is ErrorPublic.
ERROR_MEANINGS = {
    400: "the body could not be read as JSON text (e.g. it is not UTF-8)",
    401: "no valid API key: the header is missing (TRAINERY_AUTH_REQUIRED), malformed, "
         "unknown or revoked",
    404: "no such resource for this caller (another owner's reads as missing)",
    409: "the resource is not in a state that allows this",
    413: "the request body is over a size limit",
    503: "the service is busy or the database did not answer in time; nothing was done, "
         "retry after Retry-After seconds",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                               "schema": {"type": "integer"}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` for these error statuses, with the body the handlers send."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        if status == 422:
            out[422] = {"model": ValidationErrorPublic,
                        "description": "the request is invalid: every offending field with "
                                       "its reason"}
        else:
            out[status] = {"model": ErrorPublic, "description": ERROR_MEANINGS[status]}
        if status == 503:
            out[status]["headers"] = RETRY_AFTER
    return out


# Every /v1 route that reads the caller's key and takes a database slot answers these.
COMMON_ERRORS = error_responses(401, 422, 503)
# And every route that takes a JSON body these.
BODY_ERRORS = error_responses(400, 413)
# A route on one resource by id; and one that also needs the resource in some state.
NOT_FOUND = error_responses(404)
NOT_FOUND_OR_CONFLICT = error_responses(404, 409)


def _error_response(status: int, code: str, detail: Any,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": code, "detail": detail},
                        headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into {"error", "detail"}."""

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        headers = ({"Retry-After": str(exc.retry_after_s)} if isinstance(exc, ServiceBusy)
                   else None)
        return _error_response(exc.status_code, exc.code, exc.detail, headers)

    # The database did not answer in time (pool timeout, a lock held past
    # busy_timeout, a connection lost): the request was rolled back, so the
    # client may retry it as it was; for POST /v1/jobs with the same
    # Idempotency-Key. Not a 500: nothing is wrong with the request or with us.
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(OperationalError)
    async def _database_busy(request: Request, exc: Exception) -> JSONResponse:
        settings: Settings = request.app.state.settings
        return _error_response(503, "database_unavailable",
                               f"the database did not answer in time ({type(exc).__name__}); "
                               "retry the request (a job POSTed with an Idempotency-Key is "
                               "found again by the same key if it was stored)",
                               {"Retry-After": str(settings.api_retry_after_s)})

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(422, "validation_error",
                               validation_problems(exc.errors(), strip_prefix="body"))

    @app.exception_handler(ValidationError)
    async def _validation(_: Request, exc: ValidationError) -> JSONResponse:
        return _error_response(422, "validation_error", validation_problems(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found",
                405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(exc.status_code, code, exc.detail)
