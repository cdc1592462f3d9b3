"""Webhook request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.core.strict import StrictModel

EVENTS = ("job.succeeded", "job.failed", "job.finished", "study.finished")


class WebhookCreate(StrictModel):
    # The service checks both (its 422 says what is wrong in a sentence); the document
    # says what is accepted: an http(s) URL with a host (which hosts, create decides).
    url: str = Field(max_length=2000,
                     json_schema_extra={"pattern": r"^https?://[^\s/?#@]+"})
    events: list[str] = Field(min_length=1, max_length=10,
                              json_schema_extra={"items": {"enum": list(EVENTS)}})


class WebhookPublic(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: datetime
    # Only in the answer to POST /v1/webhooks: verify signatures with it.
    secret: str | None = None


class DeliveryPublic(BaseModel):
    id: int
    event: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]
