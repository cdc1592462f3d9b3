"""The SDK against the real stack: submit, follow the live stream, download, load the model."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import os
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import ROOT, Stack
from tests.specs import tiny_spec
from trainery_client import (
    AsyncClient,
    Client,
    Event,
    IdempotencyKeyReused,
    InvalidTransition,
    Job,
    ModelNotReady,
    NotFound,
    RetryPolicy,
    ValidationFailed,
)

pytestmark = pytest.mark.integration
FOLLOW_S = 180  # a stuck job fails its test instead of hanging the run


def example(name: str, **training: Any) -> dict[str, Any]:
    """An examples/ spec, with training fields replaced (fewer epochs, for speed)."""
    spec: dict[str, Any] = yaml.safe_load((ROOT / "examples" / name).read_text())
    spec["training"].update(training)
    return spec


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> Iterator[Client]:
    with Client(stack.url) as client:
        yield client


class Run:
    """A job submitted through the SDK and followed live to its end."""

    def __init__(self, spec: dict[str, Any], key: str, job: Job, events: list[Event]) -> None:
        self.spec, self.key, self.job, self.events = spec, key, job, events


@pytest.fixture(scope="module")
def digits_run(sdk: Client) -> Run:
    spec = example("digits-mlp.yaml", epochs=3)
    key = str(uuid.uuid4())
    submitted = sdk.submit(spec, idempotency_key=key)
    assert submitted.status in ("queued", "running") and submitted.name == "digits-mlp"
    events = list(sdk.follow(submitted.id, timeout=FOLLOW_S))
    return Run(spec, key, sdk.get(submitted.id), events)


def test_round_trip_submit_follow_download_and_predict(digits_run: Run, sdk: Client,
                                                       tmp_path: Path) -> None:
    job, events = digits_run.job, digits_run.events
    assert job.status == "succeeded", job.error
    assert [e.id for e in events] == sorted({e.id for e in events})
    assert [e.to_status for e in events if e.kind == "state"] == ["queued", "running",
                                                                   "succeeded"]
    epochs = [e.data["epoch"] for e in events if e.kind == "metrics" and e.data]
    assert epochs == [1, 2, 3]

    rows = sdk.metrics(job.id)
    assert [r.epoch for r in rows] == [1, 2, 3]
    first, last = rows[0].loss, rows[-1].loss
    assert first is not None and last is not None and last < first
    assert rows[-1].val_accuracy is not None
    assert [c.epoch for c in sdk.checkpoints(job.id)] == [2, 3]

    saved = sdk.download_model(job.id, tmp_path)
    assert saved.path.parent == tmp_path and saved.path.stat().st_size == saved.size
    assert saved.sha256 == hashlib.sha256(saved.path.read_bytes()).hexdigest()

    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    model = torch.jit.load(str(saved.path))  # type: ignore[no-untyped-call]
    with torch.no_grad():
        logits = model(torch.tensor(digits.data, dtype=torch.float32))
    assert logits.shape == (len(digits.target), 10)
    assert (logits.argmax(1).numpy() == digits.target).mean() > 0.8
    assert sdk.model_card(job.id)["input"]["shape"] == [None, 64]


def test_a_retried_submit_returns_the_first_job(digits_run: Run, sdk: Client) -> None:
    again = sdk.submit(digits_run.spec, idempotency_key=digits_run.key)
    assert again.id == digits_run.job.id and again.status == "succeeded"
    changed = copy.deepcopy(digits_run.spec)
    changed["training"]["epochs"] = 4
    with pytest.raises(IdempotencyKeyReused) as info:
        sdk.submit(changed, idempotency_key=digits_run.key)
    assert info.value.status_code == 409 and digits_run.job.id in str(info.value.detail)


def test_event_stream_resumes_after_last_event_id_and_ends(digits_run: Run, sdk: Client,
                                                           stack: Stack) -> None:
    events = digits_run.events
    resumed = list(sdk.follow(digits_run.job.id, after=events[2].id, timeout=FOLLOW_S))
    assert [e.id for e in resumed] == [e.id for e in events[3:]]
    assert sdk.events(digits_run.job.id) == events

    # The wire format itself: ids to resume from, and `end` once the job is terminal.
    headers = {"Accept": "text/event-stream", "Last-Event-ID": str(events[-2].id)}
    with httpx.stream("GET", f"{stack.url}/v1/jobs/{digits_run.job.id}/events",
                      headers=headers, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    assert body.startswith(f"id: {events[-1].id}\nevent: state\n")
    assert body.endswith("event: end\ndata: {}\n\n")


def _follow_ids(url: str, job_id: str, last_event_id: int | None = None,
               stop_after: int | None = None) -> tuple[list[int], bool]:
    """The event ids one raw SSE follower gets, and whether the stream said `end`."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    ids: list[int] = []
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", headers=headers,
                      timeout=FOLLOW_S) as response:
        for line in response.iter_lines():
            if line.startswith("id: "):
                ids.append(int(line[4:]))
                if stop_after is not None and len(ids) == stop_after:
                    return ids, False  # hang up mid-stream
            elif line == "event: end":
                return ids, True
    return ids, False


def test_many_followers_each_get_every_event_once_in_order(stack: Stack, sdk: Client) -> None:
    """60 followers of one running job share the API's one reader of it (app/api/followers.py):
    each gets every event exactly once, in order, then `end`; ten of them hang up after
    three events and resume with Last-Event-ID, and end up with the same sequence."""
    job = sdk.submit(tiny_spec(name="fan-out", epochs=4))
    with ThreadPoolExecutor(max_workers=70) as pool:
        whole = [pool.submit(_follow_ids, stack.url, job.id) for _ in range(60)]
        first = [pool.submit(_follow_ids, stack.url, job.id, None, 3) for _ in range(10)]
        resumed = [pool.submit(_follow_ids, stack.url, job.id, f.result()[0][-1])
                   for f in first]
        results = [f.result() for f in whole]
        rest = [f.result() for f in resumed]
    expected = [e.id for e in sdk.events(job.id)]
    assert sdk.get(job.id).status == "succeeded" and len(expected) > 5
    for ids, ended in results:
        assert ended and ids == expected
    for head, (tail, ended) in zip((f.result()[0] for f in first), rest, strict=True):
        assert ended and head + tail == expected


# The stream resumes alike on either backend: once keeps the suite quick.
@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_follow_resumes_across_an_api_restart(stack: Stack) -> None:
    events: list[Event] = []
    patient = RetryPolicy(attempts=20, backoff_s=0.2, max_backoff_s=1.0)
    with Client(stack.url, retry=patient) as client:
        job = client.submit(tiny_spec(name="reconnect", epochs=20))
        for event in client.follow(job.id, timeout=FOLLOW_S):
            events.append(event)
            if event.kind == "metrics" and event.data and event.data["epoch"] == 1:
                assert stack.api is not None
                os.killpg(stack.api.pid, signal.SIGKILL)  # the connection drops hard
                stack.api.wait()
                stack.start_api()  # the job trains on meanwhile
        assert client.get(job.id).status == "succeeded"
        assert events == client.events(job.id)  # every event once, in order
    epochs = [e.data["epoch"] for e in events if e.kind == "metrics" and e.data]
    assert epochs == list(range(1, 21))


def test_async_client(stack: Stack, tmp_path: Path) -> None:
    async def run() -> tuple[Job, list[Event], list[str]]:
        async with AsyncClient(stack.url) as client:
            job = await client.submit(tiny_spec(name="async-tiny"))
            events = [e async for e in client.follow(job.id, timeout=FOLLOW_S)]
            done = await client.wait(job.id, timeout=60)
            assert len(await client.metrics(job.id)) == 2
            saved = await client.download_model(job.id, tmp_path / "async.pt")
            assert saved.size == saved.path.stat().st_size > 0
            listed = [j.id async for j in client.list("succeeded", page_size=1)]
            return done, events, listed

    done, events, listed = asyncio.run(run())
    assert done.status == "succeeded"
    assert [e.to_status for e in events if e.kind == "state"][-1] == "succeeded"
    assert listed[0] == done.id


def test_list_walks_all_pages_newest_first(digits_run: Run, sdk: Client) -> None:
    one_by_one = [j.id for j in sdk.list(page_size=1)]
    assert one_by_one == [j.id for j in sdk.list(page_size=200)]
    assert len(one_by_one) == len(set(one_by_one)) and digits_run.job.id in one_by_one
    assert all(j.status == "succeeded" for j in sdk.list("succeeded", page_size=2))
    with pytest.raises(ValidationFailed):
        list(sdk.list("nonsense"))


def test_cancel_and_retry(digits_run: Run, sdk: Client) -> None:
    # No worker takes queue "idle", so the job stays queued until cancelled: no race.
    job = sdk.submit(tiny_spec(name="to-cancel", resources={"queue": "idle"}))
    assert job.status == "queued"
    assert sdk.cancel(job.id).status == "cancelled"
    with pytest.raises(ModelNotReady):
        sdk.download_model(job.id)
    with pytest.raises(InvalidTransition):
        sdk.cancel(job.id)
    assert sdk.retry(job.id).status == "queued"
    assert sdk.cancel(job.id).status == "cancelled"
    with pytest.raises(InvalidTransition) as info:
        sdk.retry(digits_run.job.id)
    assert info.value.status_code == 409 and info.value.error == "invalid_transition"


def test_errors_carry_the_servers_code_and_detail(sdk: Client) -> None:
    with pytest.raises(NotFound) as missing:
        sdk.get("job_doesnotexist")
    assert missing.value.error == "job_not_found"
    bad = tiny_spec(training={"epochs": 0}, model={"preset": "nope"})
    with pytest.raises(ValidationFailed) as invalid:
        sdk.submit(bad)
    assert {p["path"] for p in invalid.value.problems} >= {"training.epochs", "model.preset"}


def test_datasets(sdk: Client, tmp_path: Path) -> None:
    names = {d.id: d for d in sdk.datasets()}
    assert {"digits", "iris", "diabetes", "synthetic"} <= set(names)
    assert sdk.dataset("diabetes").task == "regression"

    data = tmp_path / "points.csv"
    rows = "".join(f"{i / 10},{i % 5 / 5},{i % 2}\n" for i in range(20))
    data.write_text("x1,x2,label\n" + rows)
    uploaded = sdk.upload_dataset(data, name="points", target="label")
    assert uploaded.id.startswith("ds_") and uploaded.format == "csv"
    assert uploaded.n_samples == 20 and uploaded.feature_names == ["x1", "x2"]
    assert uploaded.sha256 == hashlib.sha256(data.read_bytes()).hexdigest()
    assert sdk.upload_dataset(data, name="points", target="label").id == uploaded.id
    assert uploaded.id in [d.id for d in sdk.datasets()]
    assert sdk.dataset(uploaded.id).num_classes == 2
    sdk.delete_dataset(uploaded.id)
    with pytest.raises(NotFound):
        sdk.dataset(uploaded.id)
