"""The polls' own lane (app/api/hot_reads.py) answers exactly as the routes it passes by:
the same requests, sent to the app with the lane and to the same app without it, get the
same status, body and headers; the request line and the metrics name the route. And
what the app's start-up made is kept out of the garbage collector's sight while it
serves (a full collection of it stalled every request for 130-160 ms)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from itsdangerous import URLSafeTimedSerializer
from starlette.routing import Route, compile_path

from app.api.hot_reads import HotReads, page_poll
from app.api.polls import PagePoll
from app.core.spec import JobSpec
from app.main import GC_THRESHOLDS, create_app
from app.services import jobs as job_service
from app.services import keys
from app.services.unit_of_work import UnitOfWork
from app.settings import Limits, Settings
from app.web import session
from tests.specs import tiny_spec
from tests.unit.test_authorization import _routes

NO_BROKER = "redis://127.0.0.1:1/0"  # nothing listens: no test here needs a worker
COMPARED_HEADERS = ("content-type", "content-length", "retry-after",
                    "content-security-policy", "x-content-type-options")


def _without_lane(app: FastAPI) -> FastAPI:
    app.user_middleware = [m for m in app.user_middleware if m.cls is not HotReads]
    return app


@pytest.fixture(params=[False, True], ids=["open", "auth-required"])
def clients(request: pytest.FixtureRequest, database_url: str, tmp_path: Path
            ) -> Iterator[tuple[TestClient, TestClient, dict[str, str]]]:
    """The app with its lane and without, on one database: alice's and bob's keys, a job of
    each and one of the default owner."""
    settings = Settings(database_url=database_url, data_dir=tmp_path, broker_url=NO_BROKER,
                        auth_required=request.param)
    with TestClient(create_app(settings)) as lane, \
            TestClient(_without_lane(create_app(settings))) as routes:
        named: dict[str, str] = {}
        with lane.app.state.sessionmaker.begin() as session:  # type: ignore[attr-defined]
            for owner in ("alice", "bob", "default"):
                _, named[f"{owner}_key"] = keys.create(session, owner, "k")
                spec = JobSpec.model_validate(tiny_spec(name=f"{owner}-job"))
                job, _ = job_service.submit(UnitOfWork(session), spec, owner=owner,
                                            limits=Limits(), idempotency_key=None)
                named[f"{owner}_job"] = job.id
        yield lane, routes, named


PATHS = ["/v1/jobs/{alice_job}", "/v1/jobs/{bob_job}", "/v1/jobs/{default_job}",
         "/v1/jobs/job_missing", "/v1/jobs/job%20with%20space", "/v1/jobs/{alice_job}?x=1",
         "/v1/jobs", "/v1/jobs?limit=1", "/v1/jobs?status=queued&limit=200",
         "/v1/jobs?status=running", "/v1/jobs?status=bogus", "/v1/jobs?cursor=not-a-cursor",
         "/v1/jobs?limit=0", "/v1/jobs?limit=201", "/v1/jobs?limit=abc", "/v1/jobs?limit=",
         "/v1/jobs?status=", "/v1/jobs?limit=2&limit=3", "/v1/jobs?other=1",
         "/v1/jobs/", "/v1/jobs/{alice_job}/"]
AUTHORIZATION = [None, "Bearer {alice_key}", "Bearer {bob_key}", "bearer {default_key}",
                 "Bearer unknown", "Basic abc", "Bearer", ""]


def _answer(client: TestClient, path: str, authorization: str | None,
            cookie: str | None = None) -> dict[str, Any]:
    headers = {} if authorization is None else {"Authorization": authorization}
    if cookie is not None:
        headers["Cookie"] = f"{session.COOKIE}={cookie}"
    r = client.get(path, headers=headers, follow_redirects=False)
    return {"status": r.status_code, "body": r.content,
            **{h: r.headers.get(h) for h in COMPARED_HEADERS}}


def test_the_lane_answers_as_the_routes_do(
        clients: tuple[TestClient, TestClient, dict[str, str]]) -> None:
    lane, routes, named = clients
    statuses = set()
    for template in PATHS:
        for auth in AUTHORIZATION:
            path = template.format(**named)
            authorization = None if auth is None else auth.format(**named)
            got, expected = _answer(lane, path, authorization), _answer(routes, path, authorization)
            assert got == expected, (path, authorization)
            statuses.add(got["status"])
    # The matrix reaches every kind of answer: found, a page, each error, a redirect.
    assert {200, 401, 404, 422, 307} <= statuses


def test_the_lane_reads_the_dashboards_cookie_as_the_routes_do(
        clients: tuple[TestClient, TestClient, dict[str, str]]) -> None:
    lane, routes, named = clients
    settings = lane.app.state.settings  # type: ignore[attr-defined]
    signed = URLSafeTimedSerializer(session.load_secret(settings), salt="trainery-web-session")
    cookies = [signed.dumps({"csrf": "c", "key": named["alice_key"]}),
               signed.dumps({"csrf": "c", "key": "revoked"}), "forged"]
    # The signed-in cookie acts as alice, whether or not keys are required.
    assert _answer(lane, f"/v1/jobs/{named['alice_job']}", None, cookies[0])["status"] == 200
    assert _answer(lane, f"/v1/jobs/{named['default_job']}", None, cookies[0])["status"] == 404
    for template in ("/v1/jobs/{alice_job}", "/v1/jobs/{default_job}", "/v1/jobs"):
        for cookie in cookies:
            for auth in (None, "Bearer {bob_key}"):
                path = template.format(**named)
                authorization = None if auth is None else auth.format(**named)
                assert (_answer(lane, path, authorization, cookie)
                        == _answer(routes, path, authorization, cookie)), (path, cookie, auth)


def test_the_page_a_plain_query_asks_for() -> None:
    assert page_poll(b"") == PagePoll(None, 50, None)
    assert page_poll(b"status=queued&limit=7&cursor=c&x=") == PagePoll("queued", 7, "c")
    # Whatever FastAPI must validate or choose between goes to the route.
    for query in (b"limit=0", b"limit=201", b"limit=%2B5", b"limit=5.0", b"limit=",
                  b"status=", b"limit=1&limit=2", "limit=\u0665".encode()):
        assert page_poll(query) is None, query


def test_the_lane_names_its_route_in_the_request_line_and_the_metrics(
        clients: tuple[TestClient, TestClient, dict[str, str]],
        caplog: pytest.LogCaptureFixture) -> None:
    lane, _, named = clients
    headers = {"Authorization": f"Bearer {named['alice_key']}", "X-Request-ID": "poll-1"}
    with caplog.at_level("INFO", logger="trainery.api"):
        r = lane.get(f"/v1/jobs/{named['alice_job']}", headers=headers)
    assert r.status_code == 200 and r.headers["x-request-id"] == "poll-1"
    line = next(rec for rec in caplog.records if getattr(rec, "request_id", None) == "poll-1")
    assert (line.route, line.status) == ("/v1/jobs/{job_id}", 200)  # type: ignore[attr-defined]
    metrics = lane.get("/metrics").text
    assert 'route="/v1/jobs/{job_id}"' in metrics


def test_no_other_route_shares_the_lanes_paths(database_url: str, tmp_path: Path) -> None:
    """The lane answers every GET /v1/jobs/<one segment>: no other route may serve one."""
    app = create_app(Settings(database_url=database_url, data_dir=tmp_path))
    samples = ["/v1/jobs", "/v1/jobs/x", "/v1/jobs/job_01", "/v1/jobs/metrics"]
    for path, route in _routes(app):
        if not isinstance(route, Route) or "GET" not in (route.methods or ()):
            continue
        regex = compile_path(path)[0]
        served = [s for s in samples if regex.match(s)]
        if path in ("/v1/jobs", "/v1/jobs/{job_id}"):
            continue
        assert not served, f"{path} would be answered by the polls' lane: {served}"


def test_start_up_is_frozen_while_the_app_serves(database_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=database_url, data_dir=tmp_path, broker_url=NO_BROKER)
    app = create_app(settings)
    before = gc.get_threshold()
    with TestClient(app):
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() == 0  # shut down: freed like anything else
    assert gc.get_threshold() == before
