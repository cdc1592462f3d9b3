"""The SDK's study calls without a server (httpx.MockTransport stands in for it here only;
tests/integration/test_cli.py drives the same calls through the CLI against a real stack)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from trainery_client import (
    AsyncClient,
    Client,
    ServerError,
    StudySnapshot,
    ValidationFailed,
    WaitTimeout,
)
from trainery_client.retry import RetryPolicy

FAST = RetryPolicy(attempts=3, backoff_s=0.0, jitter=False)

REQUEST = {
    "name": "lr",
    "base": {"framework": "pytorch", "dataset": {"builtin": "iris"},
             "training": {"epochs": 2, "optimizer": {"lr": 0.01}}},
    "space": {"training.optimizer.lr": {"type": "loguniform", "low": 0.001, "high": 0.1}},
    "objective": {"metric": "val_accuracy", "mode": "max"},
    "searcher": {"name": "random", "max_trials": 2},
}


def study_json(state: str = "running", **extra: Any) -> dict[str, Any]:
    return {"id": "study_1", "name": "lr", "state": state, "end_reason": None,
            "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z",
            "finished_at": None, "objective": REQUEST["objective"],
            "searcher": REQUEST["searcher"], "space": REQUEST["space"], "base": REQUEST["base"],
            "rungs": None, "trials": {"running": 1, "total": 1}, "epochs_trained": 0,
            "best_trial": None, **extra}


def trial_json(number: int, state: str = "running", value: float | None = None) -> dict[str, Any]:
    return {"number": number, "job_id": f"job_{number}", "job_status": "running",
            "state": state, "pruned": False, "params": {"training.optimizer.lr": 0.01},
            "value": value, "value_epoch": 1 if value is not None else None,
            "epochs_trained": 1, "rung": None, "error": None,
            "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z"}


def client(handler: Any) -> Client:
    return Client("http://trainery.test", transport=httpx.MockTransport(handler), retry=FAST)


def test_create_study_from_a_yaml_file_sends_its_request_once(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(REQUEST))
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("POST", "/v1/studies")
        bodies.append(json.loads(request.content))
        if len(bodies) == 1:
            return httpx.Response(201, json=study_json())
        return httpx.Response(503, json={"error": "service_busy", "detail": "busy"})

    with client(handler) as c:
        study = c.create_study(path)
        assert study.id == "study_1" and not study.is_terminal
        with pytest.raises(ServerError):  # a POST that may have landed is not sent again
            c.create_study(REQUEST)
    assert bodies == [REQUEST, REQUEST]


def test_create_study_refuses_a_file_without_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("- just\n- a list\n")
    with client(lambda r: httpx.Response(500)) as c, pytest.raises(ValueError, match="mapping"):
        c.create_study(path)


def test_a_refused_study_names_the_field() -> None:
    detail = [{"path": "space.model.layers[3].units", "message": "not in the base spec"}]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"error": "validation_error", "detail": detail})

    with client(handler) as c, pytest.raises(ValidationFailed) as info:
        c.create_study(REQUEST)
    assert info.value.problems[0]["path"] == "space.model.layers[3].units"


def test_study_reads_trials_and_pages_of_studies() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path, params = request.url.path, request.url.params
        if path == "/v1/studies":
            assert params["state"] == "running" and params["limit"] == "1"
            if "cursor" not in params:
                return httpx.Response(200, json={"data": [study_json()], "next_cursor": "c1"})
            return httpx.Response(200, json={"data": [study_json(id="study_0")],
                                             "next_cursor": None})
        if path == "/v1/studies/study_1/trials":
            return httpx.Response(200, json=[trial_json(0, "completed", 0.9), trial_json(1)])
        assert request.url.raw_path == b"/v1/studies/study_1"
        return httpx.Response(200, json=study_json(best_trial={
            "number": 0, "job_id": "job_0", "params": {"training.optimizer.lr": 0.01},
            "value": 0.9, "epoch": 1}))

    with client(handler) as c:
        assert [s.id for s in c.studies("running", page_size=1)] == ["study_1", "study_0"]
        study = c.study("study_1")
        trials = c.study_trials("study_1")
    assert study.best_trial is not None and study.best_trial.job_id == "job_0"
    assert [(t.number, t.state, t.value) for t in trials] == [(0, "completed", 0.9),
                                                               (1, "running", None)]


def test_study_ids_stay_inside_their_path_segment() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.raw_path == b"/v1/studies/..%2Fjobs/cancel"
        return httpx.Response(202, json=study_json("cancelled"))

    with client(handler) as c:
        assert c.cancel_study("../jobs").state == "cancelled"


def test_update_study_sends_only_the_limits_given() -> None:
    sent: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "PATCH"
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=study_json())

    with client(handler) as c:
        c.update_study("study_1", max_concurrent_trials=3)
        c.update_study("study_1", max_trials=9, max_concurrent_trials=1)
        with pytest.raises(ValueError):
            c.update_study("study_1")
    assert sent == [{"max_concurrent_trials": 3}, {"max_trials": 9, "max_concurrent_trials": 1}]


def follow_handler(polls: list[int]) -> Any:
    """Three polls: one trial running, the same again (no change), then the study ended."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/trials"):
            done = polls[-1] >= 3
            return httpx.Response(200, json=[trial_json(0, "completed" if done else "running",
                                                        0.9 if done else None)])
        polls.append(len(polls) + 1)
        return httpx.Response(200, json=study_json("succeeded" if polls[-1] >= 3 else "running"))

    return handler


def test_follow_study_emits_each_change_until_the_study_ends() -> None:
    polls: list[int] = []
    with client(follow_handler(polls)) as c:
        seen = list(c.follow_study("study_1", poll_s=0.01))
    assert polls == [1, 2, 3]
    assert [(s.study.state, s.trials[0].state) for s in seen] == [("running", "running"),
                                                                  ("succeeded", "completed")]


def test_wait_study_gives_up_at_the_timeout() -> None:
    with client(lambda r: httpx.Response(200, json=study_json())) as c, \
            pytest.raises(WaitTimeout) as info:
        c.wait_study("study_1", timeout=0.2, poll_s=0.05)
    assert "study study_1 is still running" in str(info.value)
    assert info.value.detail["state"] == "running"


def test_async_client_runs_the_same_study_plans() -> None:
    polls: list[int] = []
    follow = follow_handler(polls)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json=study_json())
        return follow(request)  # type: ignore[no-any-return]

    async def run() -> tuple[str, list[StudySnapshot], str]:
        async with AsyncClient("http://trainery.test", retry=FAST,
                               transport=httpx.MockTransport(handler)) as c:
            created = await c.create_study(REQUEST)
            seen = [s async for s in c.follow_study(created.id, poll_s=0.01)]
            ended = await c.wait_study(created.id, poll_s=0.01)
            return created.state, seen, ended.state

    created, seen, ended = asyncio.run(run())
    assert created == "running" and len(seen) == 2 and ended == "succeeded"
