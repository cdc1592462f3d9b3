"""Webhook request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

WebhookEvent = Literal["job.succeeded", "job.failed", "job.finished", "study.finished"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # An http(s) URL with a host; which hosts are allowed is checked on create.
    url: str = Field(max_length=2000, pattern=r"^https?://[^\s/?#@]+")
    events: list[WebhookEvent] = Field(min_length=1, max_length=10)


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
