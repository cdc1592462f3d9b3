"""The base of every request model: unknown fields, non-finite numbers and integers the
store cannot hold are refused with a 422 that names the field.

JSON as Python parses it takes `Infinity` and `NaN`, and integers of any size; a
stored spec must equal the one sent (JSON columns hold neither), and SQL integers
are signed 64-bit. One base says so for every model instead of a check per field.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, model_validator

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Separates a field path from its message in a model validator's error (errors.py reads it).
FIELD_MARK = "\x1f"


def field_error(loc: tuple[str | int, ...], message: str) -> ValueError:
    """An error a model validator raises for one of its fields, so the 422 names that field."""
    # Pydantic reports a model validator's error at the model's own path; the
    # message carries the exact field (app/core/errors.validation_problems).
    return ValueError(f"{FIELD_MARK}{'.'.join(str(p) for p in loc)}{FIELD_MARK}{message}")


def _numbers(value: Any, loc: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...],
                                                                    int | float]]:
    # Nested models check themselves; free-form containers (a choice's values) are walked.
    if isinstance(value, (bool, BaseModel)):
        return
    if isinstance(value, (int, float)):
        yield loc, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _numbers(item, (*loc, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, (*loc, str(key)))


class StrictModel(BaseModel):
    """Refuses unknown fields, non-finite floats and integers outside signed 64 bits."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="after")
    def _storable_numbers(self) -> Self:
        for name in type(self).model_fields:
            for loc, number in _numbers(getattr(self, name), (name,)):
                if isinstance(number, float) and not math.isfinite(number):
                    raise field_error(loc, "Input should be a finite number")
                if isinstance(number, int) and not INT64_MIN <= number <= INT64_MAX:
                    raise field_error(loc, f"Input should be a 64-bit integer, between "
                                           f"{INT64_MIN} and {INT64_MAX}")
        return self
