"""Real log lines of a real API and worker, parsed as JSON; a request id follows the job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Stack
from tests.specs import tiny_spec

pytestmark = pytest.mark.integration


@pytest.fixture
def json_stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(f"sqlite:///{tmp_path / 'trainery.db'}", tmp_path,
                  # the default warm policy: the job's runner is a spare handed its job
                  extra_env={"TRAINERY_LOG_FORMAT": "json", "TRAINERY_WARM_RUNNERS": "last"})
    from tests.harness import migrate

    migrate(stack.database_url)
    try:
        stack.start_api()
        stack.start_worker("w1")
        yield stack
    finally:
        stack.stop()


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line that is a JSON object (Celery's start banner is printed, not logged)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_every_line_is_json_and_the_request_id_reaches_the_worker(json_stack: Stack) -> None:
    r = json_stack.client.post("/v1/jobs", json=tiny_spec(epochs=1),
                               headers={"X-Request-ID": "req-logs-42"})
    assert r.status_code == 201 and r.headers["X-Request-ID"] == "req-logs-42"
    job_id = r.json()["id"]
    assert json_stack.wait(job_id)["status"] == "succeeded"
    generated = json_stack.client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    bad = json_stack.client.get("/healthz", headers={"X-Request-ID": "no spaces please"})
    assert bad.headers["X-Request-ID"] != "no spaces please"  # replaced, not echoed

    api_text = json_stack.log_path("api").read_text().splitlines()
    api = [json.loads(line) for line in api_text if line.strip()]  # every line parses
    assert len(api) == len([line for line in api_text if line.strip()])
    submit = [x for x in api if x.get("request_id") == "req-logs-42" and x["event"] == "request"]
    assert len(submit) == 1
    line = submit[0]
    assert (line["method"], line["route"], line["status"], line["level"]) == (
        "POST", "/v1/jobs", 201, "info")
    assert isinstance(line["duration_s"], float) and line["ts"].endswith("+00:00")

    worker = json_lines(json_stack.log_path("worker-w1"))
    caused = [x for x in worker if x.get("request_id") == "req-logs-42"]
    assert caused, "the wake-up did not carry the request id into the worker"
    assert any(x.get("job_id") == job_id and x.get("attempt") == 1 and x.get("worker")
               for x in caused)
    assert all({"ts", "level", "event", "component"} <= set(x) for x in worker)

    # The runner's own lines reach the worker's log through the descriptor it inherits,
    # with the job, the attempt, the worker and the submit's request id.
    runner = [x for x in worker if x["component"] == "runner"]
    assert [x["event"] for x in runner] == ["runner started", "runner finished"]
    worker_name = next(x["worker"] for x in caused if x.get("worker"))
    assert all((x["job_id"], x["attempt"], x["worker"], x["request_id"]) == (
        job_id, 1, worker_name, "req-logs-42") for x in runner)
    assert runner[0]["framework"] == "pytorch" and runner[1]["outcome"] == "ok"
    assert isinstance(runner[1]["duration_s"], float)


def test_a_runner_carries_only_its_own_jobs_request_id(json_stack: Stack) -> None:
    """A wake-up runs the most urgent job of its queue, which may be another than the one
    its request submitted: that run carries no request id rather than a stranger's."""
    ids = {}
    for name, priority in (("first", 0), ("second", 0), ("urgent", 5)):
        r = json_stack.client.post("/v1/jobs", json=tiny_spec(name=name, epochs=1,
                                                              priority=priority),
                                   headers={"X-Request-ID": f"req-{name}"})
        assert r.status_code == 201
        ids[r.json()["id"]] = f"req-{name}"
    for job_id in ids:
        assert json_stack.wait(job_id)["status"] == "succeeded"
    worker = json_lines(json_stack.log_path("worker-w1"))
    runner = [x for x in worker if x["component"] == "runner"]
    assert {x["job_id"] for x in runner} == set(ids)
    for line in runner:
        assert line.get("request_id") in (None, ids[line["job_id"]]), line
    # The urgent job, submitted last, was run by an earlier job's wake-up, which says so
    # (with that wake-up's request id, or none for a wake-up a run's end sent).
    others = [x for x in worker if x["event"].startswith("wake-up for ") and " ran " in x["event"]]
    assert others
    for line in others:
        assert line.get("request_id") in (None, ids[line["event"].split()[2]]), line
