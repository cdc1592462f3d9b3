"""Polls of jobs: the queue position a pending reason gives, what one poll costs in SQL,
and the JSON columns as read back."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.spec import JobSpec
from app.db import json_loads
from app.main import create_app
from app.models import Job, utcnow
from app.services import jobs as job_service
from app.services import lifecycle
from app.services import workers as worker_service
from app.services.unit_of_work import UnitOfWork
from app.settings import Limits, Settings
from tests.specs import tiny_spec

# Nothing listens here: wake-ups fail (and say so in the job's events); no test needs a worker.
NO_BROKER = "redis://127.0.0.1:1/0"


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(database_url=database_url, data_dir=tmp_path, broker_url=NO_BROKER)
    with TestClient(create_app(settings)) as client:
        yield client


def _factory(client: TestClient) -> sessionmaker[Session]:
    return client.app.state.sessionmaker  # type: ignore[attr-defined,no-any-return]


def _submit(session: Session, name: str, priority: int = 0, queue: str | None = None) -> str:
    spec = JobSpec.model_validate(tiny_spec(name=name, priority=priority,
                                            resources={"queue": queue} if queue else {}))
    job, _ = job_service.submit(UnitOfWork(session), spec, owner="default", limits=Limits(),
                                idempotency_key=None)
    session.flush()
    return job.id


def _ahead(job: dict[str, Any]) -> int:
    match = re.match(r"(\d+) job\(s\) ahead in queue", job["pending_reason"] or "")
    assert match, job["pending_reason"]
    return int(match.group(1))


def test_queue_position_follows_priority_then_age_then_id(client: TestClient) -> None:
    """Each queued job's "N job(s) ahead" is its place in the order workers claim in:
    higher priority first, then older, then (same instant) the smaller id; running jobs
    and other queues do not count."""
    same_instant = utcnow() - timedelta(minutes=5)
    with _factory(client).begin() as session:
        worker_service.register(session, name="w1", hostname="h", pid=1, device="cpu",
                                gpu_name=None, queues=["default", "other"], state="ready")
        ids = [_submit(session, f"j{i}", priority=i % 3) for i in range(9)]
        # Three jobs created at the same instant: the id breaks the tie.
        session.execute(update(Job).where(Job.id.in_(ids[:3])).values(created_at=same_instant))
        _submit(session, "elsewhere", priority=5, queue="other")
        running = _submit(session, "running", priority=9)
        assert lifecycle.claim(session, running, "w1") is not None
        rows = {j.id: j for j in session.query(Job).where(Job.id.in_(ids))}
    order = sorted(ids, key=lambda i: (-rows[i].priority, rows[i].created_at, i))
    for expected, job_id in enumerate(order):
        r = client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        assert _ahead(r.json()) == expected, (job_id, r.json()["pending_reason"])
    page = client.get("/v1/jobs", params={"status": "queued", "limit": 50}).json()["data"]
    by_id = {j["id"]: j for j in page}
    assert [_ahead(by_id[i]) for i in order] == list(range(len(order)))
    assert client.get(f"/v1/jobs/{running}").json()["pending_reason"] is None


def test_a_poll_is_one_statement(client: TestClient) -> None:
    """GET /v1/jobs/{id} of a running job reads one row: no BEGIN, no ROLLBACK, no
    separate count (a transaction is not needed for one statement: app.db.reader)."""
    with _factory(client).begin() as session:
        job_id = _submit(session, "polled")
        assert lifecycle.claim(session, job_id, "w1") is not None
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engine = client.app.state.polls.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(3):
            r = client.get(f"/v1/jobs/{job_id}")
            assert r.status_code == 200 and r.json()["status"] == "running"
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(seen) == 3 and all(s.lstrip().upper().startswith("SELECT") for s in seen), seen


def test_a_poll_sees_each_commit(client: TestClient) -> None:
    """Reads outside a transaction still see every committed change at once."""
    with _factory(client).begin() as session:
        job_id = _submit(session, "watched")
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    with _factory(client).begin() as session:
        lifecycle.claim(session, job_id, "w1")
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    with _factory(client).begin() as session:
        lifecycle.record_epoch(session, job_id, 1, 1, 2, {"loss": 0.5}, None)
    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["progress"] == {"epoch": 1, "epochs": 2} and body["metrics"] == {"loss": 0.5}
    assert client.get("/v1/jobs/job_nope").status_code == 404


def test_json_columns_read_what_json_wrote() -> None:
    """The fast reader gives what json.loads would, including what orjson refuses."""
    assert json_loads('{"a": [1, 2.5, null, "x", -9223372036854775808]}') == {
        "a": [1, 2.5, None, "x", -9223372036854775808]}
    assert json_loads(b'{"b": 18446744073709551615}') == {"b": 18446744073709551615}
    nan = json_loads('{"loss": NaN}')["loss"]
    assert math.isnan(nan)


def _page(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    r = client.get("/v1/jobs", params={"limit": 50, **params})
    assert r.status_code == 200, r.text
    return r.json()["data"]  # type: ignore[no-any-return]


def test_a_page_shows_every_change_however_it_was_cached(client: TestClient) -> None:
    """A page is never staler than its own read: each kind of write to a job (claim,
    epoch, heartbeat, failure, retry) shows on the next poll, and the page equals what
    reading every job in full gives (with the same fleet reading)."""
    with _factory(client).begin() as session:
        worker_service.register(session, name="w1", hostname="h", pid=1, device="cpu",
                                gpu_name=None, queues=["default"], state="ready")
        ids = [_submit(session, f"p{i}") for i in range(4)]
    first = {j["id"]: j for j in _page(client)}
    assert all(first[i]["status"] == "queued" and first[i]["pending_reason"] for i in ids)
    steps = [
        lambda s: lifecycle.claim(s, ids[0], "w1"),
        lambda s: lifecycle.record_epoch(s, ids[0], 1, 1, 2, {"loss": 0.25}, {"loss": 0.25}),
        lambda s: lifecycle.heartbeat(s, ids[0], 1),
        lambda s: lifecycle.fail(s, ids[0], 1, "internal", "boom"),
        lambda s: lifecycle.retry(s, ids[0]),
    ]
    for step in steps:
        with _factory(client).begin() as session:
            step(session)
        shown = {j["id"]: j for j in _page(client)}
        with _factory(client)() as session:
            full = [job_service.read_job(session, i, "default") for i in ids]
            fleet = client.app.state.fleet  # type: ignore[attr-defined]
            expected = {j.id: j.model_dump(mode="json")
                        for j in job_service.to_public_page(session, full, fleet=fleet)}
        assert shown == expected
    assert shown[ids[0]]["status"] == "queued" and shown[ids[0]]["pending_reason"]


def test_a_second_poll_of_a_page_reads_only_what_changed(client: TestClient) -> None:
    with _factory(client).begin() as session:
        ids = [_submit(session, f"c{i}") for i in range(5)]
        lifecycle.claim(session, ids[0], "w1")
    _page(client)  # every version shown once
    seen: list[tuple[str, Any]] = []

    def count(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    engine = client.app.state.polls.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", count)
    try:
        _page(client, status="running")
        assert len(seen) == 1, seen  # the page's own read: nothing read in full
        with _factory(client).begin() as session:
            lifecycle.heartbeat(session, ids[0], 1)
        seen.clear()
        assert _page(client, status="running")[0]["heartbeat_at"] is not None
        assert len(seen) == 2 and ids[0] in str(seen[1][1]), seen  # that one job, in full
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_the_cache_keeps_at_most_its_entries() -> None:
    cache = job_service.PublicCache(2)
    with_reason = tiny_spec()
    for i in range(5):
        job = job_service.JobPublic.model_validate({
            "id": f"j{i}", "name": "n", "framework": "pytorch", "status": "queued",
            "attempt": 0, "worker": None, "priority": 0, "created_at": utcnow(),
            "updated_at": utcnow(), "started_at": None, "finished_at": None,
            "heartbeat_at": None, "progress": {"epoch": 0, "epochs": 2}, "metrics": None,
            "best": None, "error": None, "pending_reason": None, "spec": with_reason})
        cache.put((f"j{i}",), job)
    assert len(cache) == 2 and cache.get(("j0",)) is None and cache.get(("j4",)) is not None
