"""What the API returns for jobs, their metrics, events, checkpoints and models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class Progress(BaseModel):
    epoch: int
    epochs: int


class JobError(BaseModel):
    type: str
    message: str


class JobPublic(BaseModel):
    id: str
    name: str
    framework: str
    status: str
    attempt: int
    worker: str | None
    priority: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    progress: Progress
    metrics: dict[str, Any] | None
    best: dict[str, Any] | None
    error: JobError | None
    pending_reason: str | None
    spec: dict[str, Any]


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None


class EventPublic(BaseModel):
    id: int
    ts: datetime
    kind: str
    attempt: int
    from_status: str | None
    to_status: str | None
    message: str
    data: dict[str, Any] | None


class CheckpointPublic(BaseModel):
    epoch: int
    attempt: int
    size: int
    sha256: str
    metrics: dict[str, Any] | None
    created_at: datetime


class DatasetPublic(BaseModel):
    id: str
    name: str
    source: str
    task: str
    n_samples: int | None
    sample_shape: list[int] | None
    num_classes: int | None
    description: str
