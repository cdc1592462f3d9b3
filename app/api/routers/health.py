"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from app.api.deps import CeleryDep, SessionFactoryDep
from app.broker import broker_reachable

router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers (on its event loop: a busy threadpool does not fail it)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "the database or the broker "
                                                                "does not answer"}})
async def readyz(factory: SessionFactoryDep, celery: CeleryDep) -> JSONResponse:
    """The database and the broker both answer."""

    def check_db() -> tuple[bool, str]:
        try:
            with factory() as session:
                session.execute(text("SELECT 1"))
            return True, "ok"
        except Exception as exc:  # noqa: BLE001 - readiness reports any failure
            return False, f"{type(exc).__name__}: {exc}"

    db_ok, db_detail = await run_in_threadpool(check_db)
    broker_ok, broker_detail = await run_in_threadpool(broker_reachable, celery)
    ready = db_ok and broker_ok
    body = {"status": "ready" if ready else "not_ready",
            "checks": {"database": db_detail, "broker": broker_detail}}
    return JSONResponse(body, status_code=200 if ready else 503)
