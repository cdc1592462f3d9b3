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
from app.settings import Settings


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
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(exc.status_code, code, exc.detail)
