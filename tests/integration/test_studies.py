"""Studies through a real stack: each searcher, ASHA's pruning and promotion, bad input, and a
worker SIGKILLed mid-study."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.harness import Stack

pytestmark = pytest.mark.integration


def base_spec(epochs: int = 2, **dataset: Any) -> dict[str, Any]:
    return {
        "name": "iris", "framework": "pytorch",
        "dataset": dataset or {"builtin": "iris"},
        "model": {"layers": [{"type": "dense", "units": 16, "activation": "relu"}]},
        "training": {"epochs": epochs, "batch_size": 16, "seed": 1},
    }


LR_AND_WIDTH = {
    "training.optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 0.1},
    "model.layers[0].units": {"type": "int", "low": 4, "high": 32, "log": True},
}

SEARCHERS: dict[str, dict[str, Any]] = {
    "grid": {"space": {"training.optimizer.name": {"type": "choice", "values": ["adam", "sgd"]}},
             "searcher": {"name": "grid", "max_trials": 10, "max_concurrent_trials": 2},
             "trials": 2},
    "random": {"space": LR_AND_WIDTH,
               "searcher": {"name": "random", "max_trials": 3, "max_concurrent_trials": 2,
                            "seed": 3},
               "trials": 3},
    "tpe": {"space": LR_AND_WIDTH,
            "searcher": {"name": "tpe", "max_trials": 3, "max_concurrent_trials": 1, "seed": 3},
            "trials": 3},
}


def create(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    r = stack.client.post("/v1/studies", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def wait_study(stack: Stack, study_id: str, timeout: float = 420) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        study = stack.client.get(f"/v1/studies/{study_id}").json()
        if study["state"] != "running":
            return study  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"study still running: {study}"
        time.sleep(0.5)


def trials(stack: Stack, study_id: str) -> list[dict[str, Any]]:
    return stack.client.get(f"/v1/studies/{study_id}/trials").json()  # type: ignore[no-any-return]


def messages(stack: Stack, job_id: str) -> list[str]:
    return [e["message"] for e in stack.client.get(f"/v1/jobs/{job_id}/events").json()]


@pytest.mark.parametrize("kind", list(SEARCHERS))
def test_a_study_of_each_searcher_runs_to_its_best_trial(stack: Stack, kind: str) -> None:
    case = SEARCHERS[kind]
    study = create(stack, {"name": f"{kind}-study", "base": base_spec(), "space": case["space"],
                           "objective": {"metric": "val_accuracy", "mode": "max"},
                           "searcher": case["searcher"]})
    assert study["state"] == "running" and study["trials"]["running"] >= 1
    done = wait_study(stack, study["id"])
    assert done["state"] == "succeeded", done
    assert done["end_reason"] == f"all {case['trials']} trials ended"
    assert done["trials"]["completed"] == done["trials"]["total"] == case["trials"]
    assert done["epochs_trained"] == 2 * case["trials"]
    rows = trials(stack, study["id"])
    assert [t["number"] for t in rows] == list(range(case["trials"]))
    assert len({t["job_id"] for t in rows}) == case["trials"]
    assert len({tuple(sorted(t["params"].items())) for t in rows}) == case["trials"]
    best = done["best_trial"]
    assert best["value"] == max(t["value"] for t in rows)
    job = stack.job(best["job_id"])
    assert job["status"] == "succeeded" and job["name"] == f"{kind}-study #{best['number']}"
    for path, value in best["params"].items():
        node: Any = job["spec"]
        for part in path.replace("[", ".").replace("]", "").split("."):
            node = node[int(part)] if part.isdigit() else node[part]
        assert node == value
    assert stack.client.get("/v1/studies").json()["data"][0]["id"] == study["id"]


def test_asha_prunes_promotes_from_checkpoints_and_keeps_pruned_models(stack: Stack) -> None:
    # Rungs at 1 and 3 epochs, one trial at a time: three trials reach rung 0, then the best
    # third goes on. (Four runs in all: each is tens of seconds on a loaded 2-core machine.)
    study = create(stack, {
        "name": "asha-study", "base": base_spec(epochs=3), "space": LR_AND_WIDTH,
        "objective": {"metric": "val_accuracy", "mode": "max"},
        "searcher": {"name": "asha", "max_trials": 3, "max_concurrent_trials": 1, "seed": 5,
                     "min_epochs": 1, "reduction_factor": 3, "max_rungs": 2,
                     "sampler": "random"}})
    assert study["rungs"] == [1, 3]
    done = wait_study(stack, study["id"], timeout=600)
    assert done["state"] == "succeeded", done
    rows = trials(stack, study["id"])
    assert len(rows) == 3
    pruned = [t for t in rows if t["pruned"]]
    assert len(pruned) == 2 and all(t["state"] == "pruned" and t["job_status"] == "succeeded"
                                    and t["epochs_trained"] == 1 for t in pruned)
    (top,) = [t for t in rows if t["epochs_trained"] == 3]
    assert top["state"] == "completed" and top["rung"] == 1
    assert done["epochs_trained"] == sum(t["epochs_trained"] for t in rows) == 5
    events = messages(stack, top["job_id"])
    assert sum("promoted by asha" in m for m in events) == 1
    assert any(m.startswith("resumed from the checkpoint of epoch 1") for m in events)
    metrics = stack.client.get(f"/v1/jobs/{top['job_id']}/metrics").json()
    assert [m["epoch"] for m in metrics] == [1, 2, 3]  # continued, not retrained
    r = stack.client.get(f"/v1/jobs/{pruned[0]['job_id']}/model")
    assert r.status_code == 200 and len(r.content) > 1000


def test_bad_studies_are_refused_with_field_paths(stack: Stack) -> None:
    body: dict[str, Any] = {"name": "bad", "base": base_spec(),
            "space": {"training.optimizer.lr": {"type": "uniform", "low": 0.1, "high": 20},
                      "model.layers[1].units": {"type": "int", "low": 1, "high": 4}},
            "objective": {"metric": "mae", "mode": "min"},
            "searcher": {"name": "grid", "max_trials": 3}}
    r = stack.client.post("/v1/studies", json=body)
    assert r.status_code == 422
    assert r.json()["error"] == "validation_error"
    paths = {p["path"] for p in r.json()["detail"]}
    assert paths == {"space.training.optimizer.lr.high", "space.model.layers[1].units",
                     "space.training.optimizer.lr", "objective.metric"}
    body["base"]["training"]["epochs"] = 0
    r = stack.client.post("/v1/studies", json=body)
    assert r.status_code == 422
    assert "base.training.epochs" in {p["path"] for p in r.json()["detail"]}
    assert stack.client.get("/v1/studies/study_nope").status_code == 404
    assert stack.client.patch("/v1/studies/study_nope", json={"max_trials": 3}).status_code == 404


def test_patch_and_cancel_through_the_api(stack: Stack) -> None:
    study = create(stack, {"name": "cancel-me", "base": base_spec(epochs=30),
                           "space": LR_AND_WIDTH,
                           "objective": {"metric": "val_loss", "mode": "min"},
                           "searcher": {"name": "random", "max_trials": 5}})
    r = stack.client.patch(f"/v1/studies/{study['id']}", json={"max_concurrent_trials": 2})
    assert r.status_code == 200 and r.json()["searcher"]["max_concurrent_trials"] == 2
    assert r.json()["trials"]["running"] == 2
    r = stack.client.post(f"/v1/studies/{study['id']}/cancel")
    assert r.status_code == 202 and r.json()["state"] == "cancelled"
    assert stack.client.post(f"/v1/studies/{study['id']}/cancel").status_code == 409
    for t in trials(stack, study["id"]):
        assert stack.wait(t["job_id"])["status"] == "cancelled"
    deadline = time.monotonic() + 60
    while any(t["state"] != "cancelled" for t in trials(stack, study["id"])):
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_sigkill_mid_study_neither_duplicates_nor_loses_a_trial(fresh_stack: Stack) -> None:
    """Kill the worker running a trial, twice, mid-epoch; every trial still runs exactly once
    and every promotion happens."""
    for name in ("k1", "k2"):
        fresh_stack.start_worker(name)
    synthetic = {"builtin": "synthetic", "n_samples": 6000, "sample_shape": [32],
                 "num_classes": 4, "seed": 1}
    study = create(fresh_stack, {
        "name": "chaos-study", "base": base_spec(epochs=3, **synthetic), "space": LR_AND_WIDTH,
        "objective": {"metric": "val_accuracy", "mode": "max"},
        "searcher": {"name": "asha", "max_trials": 3, "max_concurrent_trials": 2, "seed": 2,
                     "min_epochs": 1, "reduction_factor": 3, "max_rungs": 2}})
    kills = 0
    deadline = time.monotonic() + 300
    while kills < 2:
        assert time.monotonic() < deadline, f"only {kills} kills"
        running = [fresh_stack.job(t["job_id"]) for t in trials(fresh_stack, study["id"])
                   if t["state"] == "running"]
        live = [j for j in running if j["status"] == "running" and j["progress"]["epoch"] >= 1]
        if not live:
            time.sleep(0.2)
            continue
        name = live[0]["worker"].split("@")[0]
        proc = fresh_stack.workers.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        fresh_stack.start_worker(name)
    done = wait_study(fresh_stack, study["id"], timeout=600)
    assert done["state"] == "succeeded", done
    rows = trials(fresh_stack, study["id"])
    assert [t["number"] for t in rows] == [0, 1, 2]
    jobs = fresh_stack.client.get("/v1/jobs", params={"limit": 200}).json()["data"]
    assert sorted(j["id"] for j in jobs) == sorted(t["job_id"] for t in rows)
    for t in rows:
        assert t["state"] in ("completed", "pruned")
        metrics = fresh_stack.client.get(f"/v1/jobs/{t['job_id']}/metrics").json()
        assert [m["epoch"] for m in metrics] == list(range(1, t["epochs_trained"] + 1))
        promotions = sum("promoted by asha" in m for m in messages(fresh_stack, t["job_id"]))
        assert promotions == {1: 0, 3: 1}[t["epochs_trained"]]
    assert any(t["epochs_trained"] == 3 for t in rows)
