"""One authorization rule for every route, and what the fleet shows one owner of another's work.

The walk covers every route the app serves: a route added without the owner
dependency fails here, unless it is on the short public list below with a reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import BaseRoute, Mount, Route

from app.main import create_app
from app.models import Job
from app.services import keys
from app.services import workers as worker_service
from app.settings import Settings
from app.web.routes import PageRoute
from tests.specs import tiny_spec

# Nothing listens here: wake-ups fail (and say so in the job's events); no test needs a worker.
NO_BROKER = "redis://127.0.0.1:1/0"

# (method, path) answered without a key, and why each may be.
PUBLIC = {
    # Liveness and readiness probes: orchestrators carry no key; they say only "ok"/"ready".
    ("GET", "/healthz"), ("GET", "/readyz"),
    # Prometheus scrapers carry no key; counts by framework, queue and device state only,
    # no job ids or owners (docs/operations.md says to keep it on the private network).
    ("GET", "/metrics"),
    # The API's own description: the same for every caller, holds no data.
    ("GET", "/openapi.json"), ("GET", "/docs"), ("HEAD", "/docs"), ("GET", "/redoc"),
    ("HEAD", "/redoc"), ("GET", "/docs/oauth2-redirect"), ("HEAD", "/docs/oauth2-redirect"),
    ("HEAD", "/openapi.json"),
    # The sign-in form and its post (which checks the key), and signing out.
    ("GET", "/signin"), ("POST", "/signin"), ("POST", "/signout"),
}
# Mounted apps without a key: the dashboard's vendored scripts and styles, the same for all.
PUBLIC_MOUNTS = {"/static"}


def _routes(app: Any) -> Iterator[tuple[str, BaseRoute]]:
    """(full path, route) for every route, through included routers."""
    for route in app.routes:
        # FastAPI keeps an included router as one entry that expands to its routes.
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is None:
            yield route.path, route
        else:
            for context in contexts():
                yield context.path, context.original_route


def _endpoints(app: Any) -> Iterator[tuple[str, str, bool]]:
    """(method, path template, is a page) for every route the app serves."""
    for path, route in _routes(app):
        if isinstance(route, Mount):
            assert path in PUBLIC_MOUNTS, f"{path}: a mount nobody listed"
            continue
        assert isinstance(route, Route), f"{route!r}: a kind of route this walk does not know"
        page = isinstance(route, PageRoute)
        for method in sorted(route.methods or ()):
            yield method, path, page


@pytest.fixture
def guarded(module_database_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """The app with TRAINERY_AUTH_REQUIRED, and a token that was revoked."""
    settings = Settings(database_url=module_database_url, data_dir=tmp_path,
                        broker_url=NO_BROKER, auth_required=True)
    with TestClient(create_app(settings)) as client:
        factory: sessionmaker[Session] = client.app.state.sessionmaker  # type: ignore[attr-defined]
        with factory.begin() as session:
            key, token = keys.create(session, "alice", "soon revoked")
            session.flush()
            keys.revoke(session, key.id)
        yield client, token


def test_every_route_refuses_a_caller_without_a_valid_key(
        guarded: tuple[TestClient, str]) -> None:
    client, revoked = guarded
    seen_public = set()
    checked = 0
    for method, template, page in _endpoints(client.app):
        if (method, template) in PUBLIC:
            seen_public.add((method, template))
            continue
        path = re.sub(r"\{[^}]+\}", "x_1", template)
        for headers in ({}, {"Authorization": "Bearer trn_not_a_key"},
                        {"Authorization": f"Bearer {revoked}"}, {"Authorization": "Basic abc"}):
            r = client.request(method, path, headers=headers, follow_redirects=False)
            if page:
                # Pages take no header: a browser without a signed-in cookie goes to sign in.
                assert r.status_code == 303, (method, template, r.status_code, r.text[:200])
                assert r.headers["location"].startswith("/signin"), (method, template)
            else:
                assert r.status_code == 401, (method, template, headers, r.status_code, r.text)
                assert r.json()["error"] == "unauthorized"
        checked += 1
    assert seen_public == PUBLIC, f"stale public entries: {PUBLIC - seen_public}"
    assert checked >= 30  # the walk really saw the API


def test_workers_show_another_owners_job_only_as_busy(module_database_url: str,
                                                      tmp_path: Path) -> None:
    settings = Settings(database_url=module_database_url, data_dir=tmp_path, broker_url=NO_BROKER)
    with TestClient(create_app(settings)) as client:
        factory: sessionmaker[Session] = client.app.state.sessionmaker  # type: ignore[attr-defined]
        with factory.begin() as session:
            _, alice = keys.create(session, "alice", "a")
            _, bob = keys.create(session, "bob", "b")
            worker_service.register(session, name="cpu0@host", hostname="host", pid=1,
                                    device="cpu", gpu_name=None, queues=["default"],
                                    state="ready")
        as_alice = {"Authorization": f"Bearer {alice}"}
        as_bob = {"Authorization": f"Bearer {bob}"}
        running = client.post("/v1/jobs", json=tiny_spec(epochs=1), headers=as_alice).json()["id"]
        with factory.begin() as session:  # the worker claimed it
            session.execute(update(Job).where(Job.id == running)
                            .values(status="running", worker="cpu0@host", attempt=1))
        waiting = client.post("/v1/jobs", json=tiny_spec(epochs=1), headers=as_bob).json()["id"]

        seen_by_alice = client.get("/v1/workers", headers=as_alice).json()["data"]
        seen_by_bob = client.get("/v1/workers", headers=as_bob).json()["data"]
        assert [w["current_job"] for w in seen_by_alice] == [running]
        assert [w["current_job"] for w in seen_by_bob] == [worker_service.BUSY]
        for body in (client.get("/v1/workers", headers=as_bob).text,
                     client.get(f"/v1/jobs/{waiting}", headers=as_bob).text,
                     client.get("/v1/jobs", headers=as_bob).text):
            assert running not in body
        reason = client.get(f"/v1/jobs/{waiting}", headers=as_bob).json()["pending_reason"]
        assert reason.startswith("0 job(s) ahead in queue default; 1 CPU/GPU worker(s), busy")
