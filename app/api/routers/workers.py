"""/v1/workers: the live fleet."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from app.api.deps import OwnerDep, SessionDep, SettingsDep
from app.api.errors import COMMON_ERRORS
from app.services import workers as worker_service

router = APIRouter(prefix="/v1/workers", tags=["workers"], responses=COMMON_ERRORS)


class WorkerPublic(BaseModel):
    name: str
    hostname: str
    pid: int
    device: str
    gpu_name: str | None
    queues: list[str]
    state: str
    detail: str
    # The caller's own job's id; "busy" when the worker runs another owner's job.
    current_job: str | None
    started_at: datetime
    heartbeat_at: datetime


@router.get("", response_model=dict[str, list[WorkerPublic]])
def list_workers(session: SessionDep, settings: SettingsDep,
                 owner: OwnerDep) -> dict[str, list[WorkerPublic]]:
    """Workers that reported recently: their device, queues, current job (the caller's own,
    else "busy") and last heartbeat."""
    rows = worker_service.live(session, settings.worker_lost_after_s, viewer=owner)
    return {"data": [WorkerPublic.model_validate(w, from_attributes=True) for w in rows]}
