"""GET /v1/jobs runs the same few SQL statements for a page of 5 queued jobs as for 50."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import event, insert, text, update

from app.core.spec import JobSpec
from app.db import make_engine, make_sessionmaker, transaction
from app.main import create_app
from app.models import Job, utcnow
from app.services import jobs as job_service
from app.services import lifecycle
from app.services import workers as worker_service
from app.services.unit_of_work import UnitOfWork
from app.settings import Limits, Settings
from tests.specs import tiny_spec


def _queue_jobs(url: str, n: int) -> None:
    engine = make_engine(url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            # A live worker on the queue, so reasons count the jobs ahead.
            worker_service.register(session, name="w1", hostname="h", pid=1, device="cpu",
                                    gpu_name=None, queues=["default"], state="ready")
            for i in range(n):
                spec = JobSpec.model_validate(tiny_spec(name=f"q{i}", priority=i % 3))
                job_service.submit(UnitOfWork(session), spec, owner="default",
                                   limits=Limits(), idempotency_key=None)
    finally:
        engine.dispose()


def _statements_for_list(url: str, tmp_path: Path) -> tuple[int, list[dict[str, Any]]]:
    settings = Settings(database_url=url, data_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        seen: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            seen.append(statement)

        engine = client.app.state.polls.engine  # type: ignore[attr-defined]
        event.listen(engine, "before_cursor_execute", count)
        r = client.get("/v1/jobs", params={"limit": 50})
        event.remove(engine, "before_cursor_execute", count)
    assert r.status_code == 200, r.text
    return len(seen), r.json()["data"]


def test_pending_reasons_cost_a_constant_number_of_statements(database_url: str,
                                                              tmp_path: Path) -> None:
    _queue_jobs(database_url, 5)
    few, page = _statements_for_list(database_url, tmp_path)
    assert len(page) == 5 and all(j["pending_reason"] for j in page)
    _queue_jobs(database_url, 45)
    many, page = _statements_for_list(database_url, tmp_path)
    assert len(page) == 50 and all(j["pending_reason"] for j in page)
    assert few == many <= 8, (few, many)
    # Positions follow priority, then age: the highest-priority, oldest job has none ahead.
    first = min(page, key=lambda j: (-j["priority"], j["created_at"], j["id"]))
    assert first["pending_reason"].startswith("0 job(s) ahead in queue default")


def test_live_job_reads_never_scan_the_jobs_whatever_the_statistics(factory: Any) -> None:
    """The fleet's current jobs and the lost-heartbeat sweep read an index of the live
    jobs, not the whole table, once ANALYZE has counted thousands of ended jobs (on
    SQLite the fleet's read scanned the table: 40-60 ms at 100k jobs, on the API's
    event loop)."""
    now = utcnow()
    with transaction(factory) as session:
        worker_service.register(session, name="w1", hostname="h", pid=1, device="cpu",
                                gpu_name=None, queues=["default"], state="ready")
        template, _ = job_service.submit(UnitOfWork(session), JobSpec.model_validate(tiny_spec()),
                                         owner="default", limits=Limits(), idempotency_key=None)
        columns = {c.key: getattr(template, c.key) for c in Job.__table__.columns}
        session.execute(insert(Job), [
            {**columns, "id": f"job_ended{i:06d}", "status": "succeeded" if i % 10 else "failed",
             "worker": "w1"} for i in range(3000)])
        # The one live job; with it, three statuses, so ANALYZE counts a third of the rows
        # for each.
        session.execute(update(Job).where(Job.id == template.id).values(
            status="running", worker="w1", heartbeat_at=now))
    bind = factory.kw["bind"]
    with bind.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM jobs" in statement and "jobs.status IN" in statement:
            seen.append((statement, parameters))

    event.listen(bind, "before_cursor_execute", record)
    try:
        with factory() as session:
            fleet = worker_service.live(session, 30.0)
            stale = lifecycle.stale_jobs(session, now + timedelta(seconds=1))
    finally:
        event.remove(bind, "before_cursor_execute", record)
    assert [w.current_job for w in fleet] == [template.id]
    assert [job_id for job_id, _, _ in stale] == [template.id]
    assert len(seen) == 2, seen
    explain = "EXPLAIN QUERY PLAN " if bind.dialect.name == "sqlite" else "EXPLAIN "
    with bind.connect() as conn:
        for statement, parameters in seen:
            plan = " ".join(str(row) for row in conn.exec_driver_sql(explain + statement,
                                                                     parameters))
            assert "SCAN jobs" not in plan and "Seq Scan on jobs" not in plan, (statement, plan)
