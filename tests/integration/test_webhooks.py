"""Webhooks through a real stack to a real HTTP receiver: signed, retried, recorded."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Stack, free_port
from tests.specs import tiny_spec

pytestmark = pytest.mark.integration


class Receiver:
    """A loopback HTTP server that records POSTs and fails the first `fail_first` of them."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers.items()), body))
                failing = len(receiver.received) <= receiver.fail_first
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_stack(database_url: str, tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(database_url, tmp_path, extra_env={
        "TRAINERY_WEBHOOK_ALLOW_PRIVATE": "true", "TRAINERY_WEBHOOK_RETRY_BASE_S": "0.5",
        "TRAINERY_MAINTENANCE_INTERVAL_S": "0.3"})
    try:
        stack.start_api()
        stack.start_worker("w1")
        yield stack
    finally:
        stack.stop()


def wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_finished_job_is_delivered_signed_after_a_retry(hook_stack: Stack) -> None:
    receiver = Receiver(fail_first=1)
    try:
        r = hook_stack.client.post("/v1/webhooks", json={
            "url": receiver.url, "events": ["job.succeeded", "job.failed"]})
        assert r.status_code == 201, r.text
        hook = r.json()
        assert hook["secret"].startswith("whsec_") and hook["events"] == ["job.failed",
                                                                          "job.succeeded"]
        listed = hook_stack.client.get("/v1/webhooks").json()["data"]
        assert [h["id"] for h in listed] == [hook["id"]] and listed[0]["secret"] is None

        job = hook_stack.submit(tiny_spec(epochs=1))
        assert hook_stack.wait(job["id"])["status"] == "succeeded"
        wait_for(lambda: len(receiver.received) >= 2)
        headers, body = receiver.received[-1]
        ts = headers["X-Trainery-Timestamp"]
        expected = hmac.new(hook["secret"].encode(), f"{ts}.".encode() + body,
                            hashlib.sha256).hexdigest()
        assert headers["X-Trainery-Signature"] == f"sha256={expected}"
        assert abs(int(ts) - time.time()) < 120
        payload = json.loads(body)
        assert payload["event"] == "job.succeeded" and payload["job"]["id"] == job["id"]
        assert receiver.received[0][1] == body  # the retry sent the same event

        def delivered() -> bool:
            rows = hook_stack.client.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["data"]
            return bool(rows) and rows[0]["status"] == "delivered"

        wait_for(delivered, 10)
        rows = hook_stack.client.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["data"]
        assert len(rows) == 1
        assert (rows[0]["attempts"], rows[0]["last_status_code"]) == (2, 204)
    finally:
        receiver.close()


def test_a_finished_study_is_delivered_once_with_its_best_trial(hook_stack: Stack) -> None:
    receiver = Receiver()
    try:
        hook = hook_stack.client.post("/v1/webhooks", json={
            "url": receiver.url, "events": ["study.finished"]}).json()
        r = hook_stack.client.post("/v1/studies", json={
            "name": "hooked", "base": tiny_spec(epochs=1),
            "space": {"training.optimizer.name": {"type": "choice", "values": ["adam"]}},
            "objective": {"metric": "val_accuracy", "mode": "max"},
            "searcher": {"name": "grid", "max_trials": 1}})
        assert r.status_code == 201, r.text
        study_id = r.json()["id"]
        wait_for(lambda: bool(receiver.received))
        headers, body = receiver.received[0]
        payload = json.loads(body)
        assert payload["event"] == "study.finished"
        study = payload["study"]
        assert (study["id"], study["state"], study["end_reason"]) == (
            study_id, "succeeded", "all 1 trials ended")
        assert study["trials"] == {"completed": 1}
        trial = hook_stack.client.get(f"/v1/studies/{study_id}/trials").json()[0]
        assert study["best_trial"]["job_id"] == trial["job_id"]
        assert study["best_trial"]["params"] == {"training.optimizer.name": "adam"}
        ts = headers["X-Trainery-Timestamp"]
        expected = hmac.new(hook["secret"].encode(), f"{ts}.".encode() + body,
                            hashlib.sha256).hexdigest()
        assert headers["X-Trainery-Signature"] == f"sha256={expected}"
        time.sleep(1)  # the maintenance ticks that follow must not end it, or send it, again
        assert len(receiver.received) == 1
        rows = hook_stack.client.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["data"]
        assert [row["event"] for row in rows] == ["study.finished"]
    finally:
        receiver.close()


def test_a_dead_receiver_never_fails_the_job_and_is_retried(hook_stack: Stack) -> None:
    receiver = Receiver()
    url = receiver.url
    receiver.close()  # nothing listens there now
    hook = hook_stack.client.post("/v1/webhooks", json={"url": url,
                                                         "events": ["job.finished"]}).json()
    job = hook_stack.submit(tiny_spec(epochs=1))
    assert hook_stack.wait(job["id"])["status"] == "succeeded"

    def retried() -> bool:
        rows = hook_stack.client.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["data"]
        return bool(rows) and rows[0]["attempts"] >= 2

    wait_for(retried, 30)
    row = hook_stack.client.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["data"][0]
    assert row["status"] == "pending" and row["event"] == "job.finished"
    assert row["last_status_code"] is None and "Connect" in row["last_error"]
    assert hook_stack.client.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    gone = hook_stack.client.get(f"/v1/webhooks/{hook['id']}/deliveries")
    assert gone.status_code == 404 and gone.json()["error"] == "webhook_not_found"


def test_bad_registrations_are_refused(hook_stack: Stack) -> None:
    r = hook_stack.client.post("/v1/webhooks", json={"url": "ftp://x", "events": ["job.failed"]})
    assert r.status_code == 422 and "url" in json.dumps(r.json())
    r = hook_stack.client.post("/v1/webhooks", json={"url": "http://127.0.0.1/",
                                                     "events": ["job.exploded"]})
    assert r.status_code == 422 and "job.exploded" in json.dumps(r.json())
