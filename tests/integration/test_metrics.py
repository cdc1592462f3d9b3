"""GET /metrics scraped from a real API while a real worker trains: the values move."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Stack
from tests.specs import tiny_spec

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def slow_stack(database_url: str, tmp_path: Path) -> Iterator[Stack]:
    """A stack whose jobs called `slow` sleep a little each batch, so one can be seen running."""
    stack = Stack(database_url, tmp_path,
                  extra_env={"TRAINERY_FAULT_INJECTION": "slow@0:0.05/slow"})
    try:
        stack.start_api()
        stack.start_worker("w1")
        yield stack
    finally:
        stack.stop()


def scrape(stack: Stack) -> Samples:
    r = stack.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def depth(samples: Samples) -> float:
    """Jobs waiting in any queue."""
    return sum(v for (name, _), v in samples.items() if name == "trainery_queue_depth")


def test_metrics_move_while_a_job_runs(slow_stack: Stack) -> None:
    before = scrape(slow_stack)
    assert value(before, "trainery_build_info", version="0.1.0",
                 python=next(dict(k[1])["python"] for k in before
                             if k[0] == "trainery_build_info")) == 1
    job = slow_stack.submit(tiny_spec(epochs=6, name="slow"))
    slow_stack.wait(job["id"], {"running"})
    during = scrape(slow_stack)
    assert value(during, "trainery_jobs_submitted_total", framework="pytorch") == \
        value(before, "trainery_jobs_submitted_total", framework="pytorch") + 1
    assert value(during, "trainery_workers", device="cpu", state="busy") == 1
    assert value(during, "trainery_workers", device="cpu", state="idle") == 0

    # A second job waits in its queue while the only worker is busy.
    queued = slow_stack.submit(tiny_spec(epochs=1, name="slow"))
    assert depth(scrape(slow_stack)) >= 1

    for job_id in (job["id"], queued["id"]):
        assert slow_stack.wait(job_id)["status"] == "succeeded"
    after = scrape(slow_stack)
    assert value(after, "trainery_jobs_finished_total", framework="pytorch",
                 outcome="succeeded") == 2
    assert value(after, "trainery_job_duration_seconds_count", framework="pytorch") == 2
    assert value(after, "trainery_job_duration_seconds_sum", framework="pytorch") > 0
    assert value(after, "trainery_job_queue_wait_seconds_count", framework="pytorch") == 2
    assert value(after, "trainery_epoch_duration_seconds_count", framework="pytorch") == 7
    assert value(after, "trainery_runner_start_seconds_count", framework="pytorch") == 2
    assert value(after, "trainery_runner_start_seconds_sum", framework="pytorch") > 0
    assert depth(after) == 0
    deadline = time.monotonic() + 10  # the worker's next heartbeat
    while value(after, "trainery_workers", device="cpu", state="idle") != 1:
        assert time.monotonic() < deadline, "the worker never showed as idle"
        time.sleep(0.5)
        after = scrape(slow_stack)
    # Requests are counted by their route template, never by a job id.
    polls = value(after, "trainery_http_request_duration_seconds_count", method="GET",
                  route="/v1/jobs/{job_id}", status_class="2xx")
    assert polls >= 2
    assert not any(job["id"] in dict(labels).get("route", "") for _, labels in after)
    assert value(after, "trainery_http_request_duration_seconds_count", method="POST",
                 route="/v1/jobs", status_class="2xx") == 2
