"""A burst slows the API, never breaks it: 200 requests released at one instant.

Each kind (GET a job, GET the list, POST a job, a mix with /readyz) is sent by
200 plain threads over connections opened beforehand, released together by a
barrier, so the load generator is not what queues. Every answer must be 2xx, or
429/503 with Retry-After; every 201 job must exist; every POST that did not get
an answer it can trust is resolved by repeating it with its Idempotency-Key.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.db import make_engine, make_sessionmaker, transaction
from app.services import keys
from tests.harness import Stack
from tests.specs import tiny_spec

BURST = 200
CLIENT_TIMEOUT_S = 120.0


@dataclass
class Call:
    method: str
    path: str
    body: bytes | None = None
    key: str | None = None


@dataclass
class Answer:
    status: int
    retry_after: str | None
    body: bytes


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Stack]:
    """An API alone (no worker: the burst's jobs stay queued), default pool and limits, with
    API keys required, so every request's auth reads the database too."""
    engine = make_engine(database_url)
    with transaction(make_sessionmaker(engine)) as session:
        _, token = keys.create(session, "burst-owner", "burst")
    engine.dispose()
    s = Stack(database_url, tmp_path, extra_env={"TRAINERY_AUTH_REQUIRED": "true"})
    s.client.headers["Authorization"] = f"Bearer {token}"
    try:
        s.start_api()
        yield s
    finally:
        s.stop()


def burst(stack: Stack, calls: list[Call]) -> list[Answer | BaseException]:
    """Send every call at the same instant, each on its own open keep-alive connection."""
    barrier = threading.Barrier(len(calls))
    answers: list[Answer | BaseException] = [RuntimeError("no answer")] * len(calls)

    def one(i: int, call: Call) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=CLIENT_TIMEOUT_S)
        try:
            conn.connect()
            headers = {"Connection": "keep-alive", "Content-Type": "application/json",
                       "Authorization": stack.client.headers["Authorization"]}
            if call.key:
                headers["Idempotency-Key"] = call.key
            barrier.wait(timeout=60)
            conn.request(call.method, call.path, body=call.body, headers=headers)
            r = conn.getresponse()
            answers[i] = Answer(r.status, r.getheader("Retry-After"), r.read())
        except BaseException as exc:  # noqa: BLE001 - recorded and asserted on below
            answers[i] = exc
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CLIENT_TIMEOUT_S + 70)
    return answers


def post(n: int, tag: str) -> Call:
    spec = json.dumps(tiny_spec(name=f"{tag}-{n}")).encode()
    return Call("POST", "/v1/jobs", spec, key=f"{tag}-{n}")


def check(stack: Stack, calls: list[Call], answers: list[Answer | BaseException]) -> None:
    """No 500, no lost answer; refusals say when to retry; every POST resolves to one job."""
    statuses: dict[int, int] = {}
    for call, answer in zip(calls, answers, strict=True):
        if isinstance(answer, BaseException):
            if call.key is None:
                raise AssertionError(f"{call.method} {call.path}: {answer!r}")
            continue  # resolved below by its Idempotency-Key
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        assert answer.status in (200, 201, 429, 503), (call.path, answer.status, answer.body)
        if answer.status in (429, 503):
            assert answer.retry_after and answer.retry_after.isdigit(), answer
        if answer.status == 201:
            job_id = json.loads(answer.body)["id"]
            assert stack.client.get(f"/v1/jobs/{job_id}").status_code == 200
    print("burst statuses:", statuses)
    posts = [c for c in calls if c.key]
    for call in posts:
        # The client's way out of doubt: the same POST with the same key.
        r = stack.client.post("/v1/jobs", content=call.body, headers={
            "Idempotency-Key": call.key or "", "Content-Type": "application/json"})
        assert r.status_code in (200, 201), r.text
    listed = stack.client.get("/v1/jobs", params={"limit": 200}).json()["data"]
    names = [j["name"] for j in listed]
    for call in posts:
        assert names.count(json.loads(call.body or b"{}")["name"]) == 1, call.key


@pytest.mark.parametrize("kind", ["get_job", "get_list", "post_job", "mixed"])
def test_burst_of_200_slows_but_never_fails(api: Stack, kind: str) -> None:
    seed = api.submit(tiny_spec(name="seed"))
    get_job = Call("GET", f"/v1/jobs/{seed['id']}")
    get_list = Call("GET", "/v1/jobs?limit=50")
    if kind == "get_job":
        calls = [get_job] * BURST
    elif kind == "get_list":
        calls = [get_list] * BURST
    elif kind == "post_job":
        calls = [post(i, kind) for i in range(BURST)]
    else:
        mix = [get_job, get_list, Call("GET", "/readyz")]
        calls = [post(i, kind) if i % 4 == 3 else mix[i % 4] for i in range(BURST)]
    check(api, calls, burst(api, calls))
