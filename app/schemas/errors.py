"""The one error body every route answers with: {"error": CODE, "detail": ...}."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """One offending field of a 422."""

    path: str = Field(description="the field as a path, e.g. model.layers[0].units; $ for the "
                                  "whole body")
    loc: list[str | int] = Field(description="the same path as a list of keys and indices")
    message: str = Field(description="what is wrong, in a sentence")
    type: str = Field(description="a stable kind: missing, extra_forbidden, value_error, ...")


class ErrorPublic(BaseModel):
    """An error: a stable code and what happened (a sentence, or the offending fields)."""

    error: str = Field(description="a stable code, e.g. job_not_found, unauthorized, "
                                   "invalid_transition, service_busy")
    detail: str | list[Problem]


class ValidationErrorPublic(BaseModel):
    """A request that cannot be served as sent: every offending field with its reason."""

    error: Literal["validation_error"]
    detail: list[Problem]
