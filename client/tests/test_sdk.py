"""The SDK without a server: error mapping, SSE parsing, retries, downloads, and its imports.

httpx.MockTransport stands in for the server here only; tests/integration/test_client.py
runs the same client against the real one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from trainery_client import (
    AsyncClient,
    ChecksumMismatch,
    Client,
    Conflict,
    ConnectionFailed,
    IdempotencyKeyReused,
    InvalidTransition,
    ModelNotReady,
    NotFound,
    RetryPolicy,
    ServerError,
    TraineryError,
    ValidationFailed,
    WaitTimeout,
)
from trainery_client.errors import error_from_response
from trainery_client.sse import EventFollower, SSEDecoder

ROOT = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(attempts=3, backoff_s=0.0, jitter=False)
Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, **kwargs: Any) -> Client:
    return Client("http://trainery.test", transport=httpx.MockTransport(handler),
                  retry=kwargs.pop("retry", FAST), **kwargs)


def job_json(job_id: str = "job_1", status: str = "queued", **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "name": "tiny", "framework": "pytorch", "status": status,
            "attempt": 0, "worker": None, "priority": 0,
            "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z",
            "started_at": None, "finished_at": None, "heartbeat_at": None,
            "progress": {"epoch": 0, "epochs": 2}, "metrics": None, "best": None,
            "error": None, "pending_reason": None, "spec": {}, **extra}


def event_json(event_id: int, kind: str = "log", **extra: Any) -> dict[str, Any]:
    return {"id": event_id, "ts": "2025-01-01T00:00:00Z", "kind": kind, "attempt": 1,
            "from_status": None, "to_status": None, "message": f"event {event_id}",
            "data": None, **extra}


def sse(*events: dict[str, Any], end: bool = False) -> bytes:
    out = ": keep-alive\n\n"
    for e in events:
        out += f"id: {e['id']}\nevent: {e['kind']}\ndata: {json.dumps(e)}\n\n"
    if end:
        out += "event: end\ndata: {}\n\n"
    return out.encode()


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code", "cls"), [
    (404, "job_not_found", NotFound),
    (409, "invalid_transition", InvalidTransition),
    (409, "model_not_ready", ModelNotReady),
    (409, "idempotency_key_reused", IdempotencyKeyReused),
    (409, "conflict", Conflict),
    (422, "validation_error", ValidationFailed),
    (500, "internal", ServerError),
    (503, "unavailable", ServerError),
    (405, "method_not_allowed", TraineryError),
])
def test_error_responses_map_to_typed_exceptions(status: int, code: str,
                                                 cls: type[TraineryError]) -> None:
    response = httpx.Response(status, json={"error": code, "detail": "why"})
    err = error_from_response(response)
    assert type(err) is cls
    assert (err.status_code, err.error, err.detail) == (status, code, "why")
    assert str(err) == f"{status} {code}: why"


def test_validation_errors_list_every_field() -> None:
    detail = [{"path": "training.epochs", "message": "must be at least 1"},
              {"path": "model", "message": "give exactly one of 'layers' or 'preset'"}]
    err = error_from_response(httpx.Response(422, json={"error": "validation_error",
                                                        "detail": detail}))
    assert isinstance(err, ValidationFailed)
    assert [p["path"] for p in err.problems] == ["training.epochs", "model"]
    assert "training.epochs: must be at least 1; model: give exactly one" in str(err)


def test_a_non_json_error_keeps_the_body() -> None:
    err = error_from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(err, ServerError) and err.error == "http_error"
    assert "bad gateway" in str(err)


def test_client_raises_the_servers_error_and_detail() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "job_not_found", "detail": "no job 'x'"})

    with pytest.raises(NotFound) as info, client(handler) as c:
        c.get("x")
    assert info.value.error == "job_not_found" and info.value.detail == "no job 'x'"


# -- server-sent events -------------------------------------------------------


def test_sse_decoder_follows_the_parsing_rules() -> None:
    decoder = SSEDecoder()
    lines = [": keep-alive", "", "id: 7", "event: state", "data: {\"a\":", "data:1}", "",
             "retry: 1500", "data:plain", "", "event: empty", "", "event: end", "data: {}", ""]
    events = [e for line in lines if (e := decoder.feed(line)) is not None]
    assert [(e.event, e.data, e.id) for e in events] == [
        ("state", '{"a":\n1}', "7"), ("message", "plain", None), ("end", "{}", None)]
    assert events[1].retry_ms == 1500
    assert decoder.last_event_id == "7"


def test_follower_resumes_after_the_last_event_and_stops_at_end() -> None:
    follower = EventFollower("job_1", 3, FAST)
    assert follower.request_headers()["Last-Event-ID"] == "3"
    got = [e for line in sse(event_json(4), event_json(5), end=True).decode().split("\n")
           if (e := follower.feed(line)) is not None]
    assert [e.id for e in got] == [4, 5] and follower.finished
    assert follower.request_headers()["Last-Event-ID"] == "5"


def test_follow_reconnects_with_last_event_id_when_the_stream_drops() -> None:
    seen: list[str | None] = []

    def dropped_stream() -> Iterator[bytes]:
        yield sse(event_json(1, "state", to_status="queued"), event_json(2))
        raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept"] == "text/event-stream"
        seen.append(request.headers.get("last-event-id"))
        if len(seen) == 1:
            return httpx.Response(200, content=dropped_stream())
        if len(seen) == 2:
            raise httpx.ConnectError("refused")
        if len(seen) == 3:
            return httpx.Response(200, content=sse(event_json(3)))  # closes before `end`
        return httpx.Response(200, content=sse(event_json(4), end=True))

    with client(handler) as c:
        events = list(c.follow("job_1"))
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert seen == ["0", "2", "2", "3"]


def test_follow_gives_up_after_the_retry_budget_without_progress() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused")

    with pytest.raises(ConnectionFailed), client(handler) as c:
        list(c.follow("job_1"))
    assert calls == FAST.attempts


def test_follow_gives_up_at_its_timeout_even_on_a_quiet_stream() -> None:
    def keep_alives() -> Iterator[bytes]:
        yield sse(event_json(1))
        while True:
            time.sleep(0.05)
            yield b": keep-alive\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=keep_alives())

    started = time.monotonic()
    seen: list[int] = []
    with pytest.raises(WaitTimeout) as info, client(handler) as c:
        seen.extend(e.id for e in c.follow("job_1", timeout=0.3))
    assert seen == [1] and 0.3 <= time.monotonic() - started < 2
    assert info.value.detail == {"job_id": "job_1", "last_event_id": 1}


def test_async_follow_reconnects_too() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("last-event-id"))
        if len(seen) == 1:
            return httpx.Response(200, content=sse(event_json(1)))
        return httpx.Response(200, content=sse(event_json(2), end=True))

    async def run() -> list[int]:
        async with AsyncClient("http://trainery.test", retry=FAST,
                               transport=httpx.MockTransport(handler)) as c:
            return [e.id async for e in c.follow("job_1")]

    assert asyncio.run(run()) == [1, 2]
    assert seen == ["0", "1"]


# -- retries ------------------------------------------------------------------


def test_backoff_grows_caps_and_honours_retry_after() -> None:
    policy = RetryPolicy(backoff_s=0.5, max_backoff_s=3.0, jitter=False)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(1, retry_after="2") == 2.0
    assert policy.delay(1, retry_after="600") == 3.0
    jittered = RetryPolicy(backoff_s=1.0)
    assert all(0.5 <= jittered.delay(1) <= 1.0 for _ in range(50))


def test_gets_are_retried_on_503_and_connection_errors() -> None:
    answers: list[Any] = [httpx.ConnectError("refused"),
                          httpx.Response(503, json={"error": "unavailable", "detail": "busy"}),
                          httpx.Response(200, json=job_json())]

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    with client(handler) as c:
        assert c.get("job_1").id == "job_1"
    assert answers == []


def test_retries_stop_at_the_budget() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503, json={"error": "unavailable", "detail": "busy"})

    with pytest.raises(ServerError) as info, client(handler) as c:
        c.get("job_1")
    assert calls == 3 and info.value.status_code == 503


def test_other_server_errors_are_not_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(500, json={"error": "internal", "detail": "boom"})

    with pytest.raises(ServerError), client(handler) as c:
        c.get("job_1")
    assert calls == 1


def test_submit_retries_under_one_idempotency_key() -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        if len(keys) == 1:
            raise httpx.ReadTimeout("no answer")
        assert json.loads(request.content) == {"framework": "pytorch"}
        return httpx.Response(201, json=job_json())

    with client(handler) as c:
        c.submit({"framework": "pytorch"})
        c.submit({"framework": "pytorch"})
        c.submit({"framework": "pytorch"}, idempotency_key="mine")
    assert keys[0] == keys[1] and len(keys[0]) == 36  # a uuid4, kept across the retry
    assert keys[2] != keys[0] and keys[3] == "mine"


@pytest.mark.parametrize("action", ["cancel", "retry"])
@pytest.mark.parametrize("failure", ["503", "connect"])
def test_cancel_and_retry_are_tried_once(action: str, failure: str) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if failure == "connect":
            raise httpx.ConnectError("refused")
        return httpx.Response(503, json={"error": "unavailable", "detail": "busy"})

    with pytest.raises((ServerError, ConnectionFailed)), client(handler) as c:
        getattr(c, action)("job_1")
    assert calls == [f"POST /v1/jobs/job_1/{action}"]


# -- the other calls ----------------------------------------------------------


def test_token_is_sent_as_a_bearer_credential() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer s3cret"
        return httpx.Response(200, json=job_json())

    with client(handler, token="s3cret") as c:
        c.get("job_1")


def test_job_ids_stay_inside_their_path_segment() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.raw_path == b"/v1/jobs/..%2Fdatasets/metrics"
        return httpx.Response(200, json=[])

    with client(handler) as c:
        assert c.metrics("../datasets") == []


def test_list_walks_every_page() -> None:
    pages = {None: (["job_3", "job_2"], "c1"), "c1": (["job_1"], None)}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["limit"] == "2"
        assert request.url.params.get("status") == "succeeded"
        ids, nxt = pages[request.url.params.get("cursor")]
        return httpx.Response(200, json={"data": [job_json(i) for i in ids],
                                         "next_cursor": nxt})

    with client(handler) as c:
        assert [j.id for j in c.list("succeeded", page_size=2)] == ["job_3", "job_2", "job_1"]


def test_events_pages_until_nothing_is_left() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        after = int(request.url.params["after"])
        return httpx.Response(200, json=[event_json(i) for i in range(after + 1,
                                                                        min(after + 3, 6))])

    with client(handler) as c:
        assert [e.id for e in c.events("job_1")] == [1, 2, 3, 4, 5]


def test_wait_gives_up_at_the_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=job_json(status="running"))

    with pytest.raises(WaitTimeout) as info, client(handler) as c:
        c.wait("job_1", timeout=0.3, poll_s=0.05)
    assert isinstance(info.value, TimeoutError) and info.value.detail["status"] == "running"


def test_models_keep_fields_a_newer_server_adds() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=job_json(status="succeeded", shiny_new_field=1))

    with client(handler) as c:
        job = c.get("job_1")
    assert job.is_terminal and job.to_json()["shiny_new_field"] == 1


def test_upload_sends_the_file_and_form_fields_whole_on_every_try(tmp_path: Path) -> None:
    data = tmp_path / "points.csv"
    data.write_bytes(b"x,label\n0.5,1\n")
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/datasets"
        assert request.headers["content-type"].startswith("multipart/form-data")
        bodies.append(request.read().replace(request.headers["content-type"]
                                             .split("boundary=")[1].encode(), b"B"))
        if len(bodies) < 3:
            return httpx.Response(503, json={"error": "unavailable", "detail": "busy"})
        return httpx.Response(201, json={"id": "ds_1", "name": "points.csv", "format": "csv"})

    with client(handler) as c:
        dataset = c.upload_dataset(data, task="classification", target="label")
    assert dataset.id == "ds_1" and dataset.format == "csv"
    assert len(bodies) == 3 and bodies[0] == bodies[1] == bodies[2]  # rewound for each try
    body = bodies[0]
    assert b'name="file"; filename="points.csv"' in body and b"x,label\n0.5,1\n" in body
    for field, value in (("task", b"classification"), ("target", b"label")):
        assert f'name="{field}"'.encode() + b"\r\n\r\n" + value in body
    assert b'name="name"' not in body and b'name="description"' not in body


# -- downloads ----------------------------------------------------------------

MODEL = b"\x00model-bytes" * 1000


def model_handler(body: bytes, etag_of: bytes = MODEL,
                  filename: str = "job_1.pt") -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/jobs/job_1/model"
        return httpx.Response(200, content=body, headers={
            "ETag": f'"{hashlib.sha256(etag_of).hexdigest()}"',
            "Content-Disposition": f'attachment; filename="{filename}"'})

    return handler


def test_download_verifies_the_sha256_and_uses_the_servers_filename(tmp_path: Path) -> None:
    with client(model_handler(MODEL)) as c:
        saved = c.download_model("job_1", tmp_path)
    assert saved.path == tmp_path / "job_1.pt" and saved.path.read_bytes() == MODEL
    assert saved.sha256 == hashlib.sha256(MODEL).hexdigest() and saved.size == len(MODEL)
    assert list(tmp_path.iterdir()) == [saved.path]


def test_a_corrupt_download_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ChecksumMismatch), client(model_handler(MODEL[:-1] + b"!")) as c:
        c.download_model("job_1", tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_download_never_writes_outside_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "models"
    target.mkdir()
    with client(model_handler(MODEL, filename="../../evil.pt")) as c:
        saved = c.download_model("job_1", target)
    assert saved.path == target / "evil.pt"


def test_download_errors_are_typed(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"error": "model_not_ready", "detail": "running"})

    with pytest.raises(ModelNotReady), client(handler) as c:
        c.download_model("job_1", tmp_path)


def test_a_download_that_drops_midway_is_tried_again_whole(tmp_path: Path) -> None:
    tries = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal tries
        tries += 1
        if tries == 1:
            def half() -> Iterator[bytes]:
                yield MODEL[:100]
                raise httpx.ReadError("connection reset")
            return httpx.Response(200, content=half(), headers={
                "ETag": f'"{hashlib.sha256(MODEL).hexdigest()}"'})
        return model_handler(MODEL)(request)

    with client(handler) as c:
        saved = c.download_model("job_1", tmp_path / "model.pt")
    assert tries == 2 and saved.path.read_bytes() == MODEL
    assert list(tmp_path.iterdir()) == [saved.path]  # no .part left behind


def presigned_handler(store_bodies: list[bytes], seen: list[httpx.Request]) -> Handler:
    """The API answers 307 to a presigned URL on another host; the store serves the bodies."""
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "trainery.test":
            url = f"http://store.test/bucket/model?X-Amz-Signature={len(seen)}"
            return httpx.Response(307, headers={
                "Location": url, "ETag": f'"{hashlib.sha256(MODEL).hexdigest()}"',
                "X-Trainery-SHA256": hashlib.sha256(MODEL).hexdigest(),
                "X-Trainery-Size": str(len(MODEL))})
        body = store_bodies.pop(0)
        if not body:
            return httpx.Response(503, text="<Error>SlowDown</Error>")
        # S3's ETag is an MD5: the client must not take it for the sha256.
        return httpx.Response(200, content=body, headers={
            "ETag": f'"{hashlib.md5(body).hexdigest()}"',
            "Content-Disposition": 'attachment; filename="job_1.pt"'})

    return handler


def test_a_redirected_download_checks_the_apis_sha256_and_keeps_the_token_home(
        tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    with client(presigned_handler([b"", MODEL], seen), token="secret") as c:
        saved = c.download_model("job_1", tmp_path)
    assert saved.path == tmp_path / "job_1.pt" and saved.path.read_bytes() == MODEL
    # The store's 503 sent the retry back to the API for a fresh URL.
    assert [r.url.host for r in seen] == ["trainery.test", "store.test"] * 2
    assert [r.url.params["X-Amz-Signature"] for r in seen[1::2]] == ["1", "3"]
    assert all(r.headers["authorization"] == "Bearer secret" for r in seen[0::2])
    assert not any("authorization" in r.headers for r in seen[1::2])


def test_a_redirected_download_that_differs_from_the_apis_sha256_leaves_no_file(
        tmp_path: Path) -> None:
    with pytest.raises(ChecksumMismatch), client(
            presigned_handler([MODEL[:-1] + b"!"], [])) as c:
        c.download_model("job_1", tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


class Stream(httpx.SyncByteStream):
    """A response body that records whether the client closed it."""

    def __init__(self, body: bytes) -> None:
        self.body, self.closed = body, False

    def __iter__(self) -> Iterator[bytes]:
        yield self.body

    def close(self) -> None:
        self.closed = True


def test_stopping_a_follow_early_closes_its_stream() -> None:
    body = Stream(sse(event_json(1), event_json(2)))
    with client(lambda request: httpx.Response(200, stream=body)) as c:
        events = c.follow("job_1")
        assert next(events).id == 1
        events.close()
        assert body.closed


# -- the async client runs the same plans ---------------------------------------


def test_async_client_pages_waits_downloads_and_maps_errors(tmp_path: Path) -> None:
    polls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        path = request.url.path
        if path == "/v1/jobs" and "cursor" not in request.url.params:
            return httpx.Response(200, json={"data": [job_json("job_2")], "next_cursor": "c1"})
        if path == "/v1/jobs":
            return httpx.Response(200, json={"data": [job_json("job_1")], "next_cursor": None})
        if path == "/v1/jobs/job_1":
            polls += 1
            return httpx.Response(200, json=job_json(status="succeeded" if polls > 2 else
                                                     "running"))
        if path == "/v1/jobs/job_1/model":
            return model_handler(MODEL)(request)
        return httpx.Response(404, json={"error": "job_not_found", "detail": path})

    async def run() -> tuple[list[str], str, Path]:
        async with AsyncClient("http://trainery.test", retry=FAST,
                               transport=httpx.MockTransport(handler)) as c:
            ids = [job.id async for job in c.list(page_size=1)]
            done = await c.wait("job_1", timeout=10, poll_s=0.01)
            saved = await c.download_model("job_1", tmp_path)
            with pytest.raises(NotFound):
                await c.get("job_x")
            return ids, done.status, saved.path

    ids, status, path = asyncio.run(run())
    assert ids == ["job_2", "job_1"] and status == "succeeded" and polls == 3
    assert path == tmp_path / "job_1.pt" and path.read_bytes() == MODEL
