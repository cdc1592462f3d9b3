"""The one place that turns domain errors into HTTP responses {"error", "detail"}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import DomainError, validation_problems


def _error_response(status: int, code: str, detail: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": code, "detail": detail})


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into {"error", "detail"}."""

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return _error_response(exc.status_code, exc.code, exc.detail)

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
