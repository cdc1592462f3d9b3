"""Job control and fault tolerance with real processes and real signals."""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import time
from datetime import datetime
from typing import Any

import pytest

from tests.harness import Stack
from tests.specs import tiny_spec

pytestmark = pytest.mark.integration

# Broker- and process-level behaviour (signals, crashes, timeouts, Redis) does not
# depend on the SQL backend (the CAS claims and heartbeats under it run on both in the
# lifecycle unit tests, the cancel/retry test and the chaos test): these run on one
# backend each, alternating, to keep the suite inside its time budget.
def ONE_BACKEND(backend: str) -> pytest.MarkDecorator:  # noqa: N802 - reads as a marker
    return pytest.mark.parametrize("database_url", [backend], indirect=True)



def chaos_spec(name: str, epochs: int = 8, n_samples: int = 8000) -> dict[str, Any]:
    """A job whose epochs take about a second here: long enough to be killed in the middle."""
    return {
        "name": name, "framework": "pytorch",
        "dataset": {"builtin": "synthetic", "n_samples": n_samples, "sample_shape": [32],
                    "num_classes": 4, "seed": 1},
        "model": {"preset": "mlp"},
        "training": {"epochs": epochs, "batch_size": 32, "seed": 3},
    }


def slow_spec(name: str, epochs: int = 4, **resources: Any) -> dict[str, Any]:
    spec = tiny_spec(epochs=epochs, name=name)
    if resources:
        spec["resources"] = resources
    return spec


def events(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    return stack.client.get(f"/v1/jobs/{job_id}/events").json()  # type: ignore[no-any-return]


def state_path(stack: Stack, job_id: str) -> list[str]:
    return [e["to_status"] for e in events(stack, job_id) if e["kind"] == "state"]


def ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def runner_pids(job_id: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"workers.runner {job_id}"], capture_output=True,
                         text=True)
    return [int(p) for p in out.stdout.split()]


def wait_running(stack: Stack, job_id: str, min_epoch: int = 0,
                 timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = stack.job(job_id)
        if job["status"] == "running" and job["progress"]["epoch"] >= min_epoch:
            return job
        assert time.monotonic() < deadline, f"{job_id} never ran: {job['status']}"
        assert job["status"] not in ("succeeded", "failed", "cancelled"), job
        time.sleep(0.05)


def test_cancel_a_queued_job_at_once(fresh_stack: Stack) -> None:
    # No worker serves this queue, so the job can only wait.
    job = fresh_stack.submit(slow_spec("waits", queue="nowhere"))
    r = fresh_stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert state_path(fresh_stack, job["id"]) == ["queued", "cancelled"]
    again = fresh_stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"] == "invalid_transition"
    assert fresh_stack.client.post("/v1/jobs/job_nope/cancel").status_code == 404


def test_cancel_a_running_job_stops_it_and_keeps_its_checkpoint_then_retry_resumes(
        fresh_stack: Stack) -> None:
    # A stop grace long enough that a loaded CPU (parallel tests) cannot turn the
    # runner's own stop at a batch boundary into a SIGKILL after the grace.
    fresh_stack.start_worker("w1", env={"TRAINERY_FAULT_INJECTION": "slow@1:0.05/slow",
                                        "TRAINERY_STOP_GRACE_S": "120"})
    job = fresh_stack.submit(slow_spec("slow", epochs=6))
    wait_running(fresh_stack, job["id"], min_epoch=1)
    r = fresh_stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] in ("cancelling", "cancelled")
    done = fresh_stack.wait(job["id"], timeout=150)
    # Stopped by itself at a batch boundary, long before its 6 epochs' end.
    assert done["status"] == "cancelled" and done["progress"]["epoch"] < 6
    cancelled = [e for e in events(fresh_stack, job["id"]) if e["to_status"] == "cancelled"]
    assert cancelled[0]["message"] == "cancelled: stopped at a batch boundary"
    assert state_path(fresh_stack, job["id"]) == ["queued", "running", "cancelling", "cancelled"]
    ckpts = fresh_stack.client.get(f"/v1/jobs/{job['id']}/checkpoints").json()
    assert ckpts and ckpts[-1]["epoch"] >= 1
    assert fresh_stack.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409

    # Retry: queued again, resumes from the kept checkpoint, finishes.
    r = fresh_stack.client.post(f"/v1/jobs/{job['id']}/retry")
    assert r.status_code == 202 and r.json()["status"] == "queued"
    final = fresh_stack.wait(job["id"], timeout=90)
    assert final["status"] == "succeeded" and final["attempt"] == 2
    resumed = [e for e in events(fresh_stack, job["id"]) if "resumed from" in e["message"]]
    assert resumed and resumed[0]["data"]["epoch"] == ckpts[-1]["epoch"]
    rows = fresh_stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert fresh_stack.client.post(f"/v1/jobs/{job['id']}/retry").status_code == 409


@ONE_BACKEND("sqlite")
def test_max_runtime_fails_the_job_with_timeout(fresh_stack: Stack) -> None:
    fresh_stack.start_worker("w1", env={"TRAINERY_FAULT_INJECTION": "slow@0:0.2/slow"})
    job = fresh_stack.submit(slow_spec("slow", epochs=50, max_runtime_s=3))
    done = fresh_stack.wait(job["id"], timeout=30)
    assert done["status"] == "failed" and done["error"]["type"] == "timeout"
    assert not runner_pids(job["id"])
    # The worker is still there for the next job.
    assert fresh_stack.wait(fresh_stack.submit(tiny_spec())["id"])["status"] == "succeeded"


@ONE_BACKEND("postgres")
def test_runner_segfault_fails_the_attempt_and_the_worker_stays_up(fresh_stack: Stack) -> None:
    fresh_stack.start_worker("w1", env={"TRAINERY_FAULT_INJECTION": "segfault@1/crashme"})
    job = fresh_stack.submit(tiny_spec(epochs=3, name="crashme"))
    done = fresh_stack.wait(job["id"], timeout=60)
    assert done["status"] == "failed"
    assert done["error"]["type"] == "runner_crashed" and "SIGSEGV" in done["error"]["message"]
    failed = [e for e in events(fresh_stack, job["id"]) if e["to_status"] == "failed"][0]
    assert ("Fatal Python error" in failed["data"]["stderr_tail"]
            or failed["data"]["returncode"] == -11)
    assert fresh_stack.wait(fresh_stack.submit(tiny_spec())["id"])["status"] == "succeeded"


@ONE_BACKEND("sqlite")
def test_runner_exception_is_internal_with_its_traceback(fresh_stack: Stack) -> None:
    fresh_stack.start_worker("w1", env={"TRAINERY_FAULT_INJECTION": "raise@1/boom"})
    done = fresh_stack.wait(fresh_stack.submit(tiny_spec(epochs=3, name="boom"))["id"])
    assert done["status"] == "failed" and done["error"]["type"] == "internal"
    assert "injected fault" in done["error"]["message"]


@ONE_BACKEND("postgres")
def test_a_runner_over_its_memory_cap_fails_out_of_memory(fresh_stack: Stack) -> None:
    # 1.6 GB of synthetic data fits the API's default budget (8 GiB) but not this worker's
    # runners (1.2 GB of data segment): the allocation fails at once, and says so.
    fresh_stack.start_worker("w1", env={"TRAINERY_RUNNER_MEMORY_BYTES": str(1200 << 20)})
    big = tiny_spec(name="big", dataset={"builtin": "synthetic", "n_samples": 400_000,
                                         "sample_shape": [1000], "num_classes": 2})
    done = fresh_stack.wait(fresh_stack.submit(big)["id"], timeout=90)
    assert done["status"] == "failed" and done["error"]["type"] == "out_of_memory"
    assert "ran out of memory" in done["error"]["message"]
    assert "TRAINERY_RUNNER_MEMORY_BYTES" in done["error"]["message"]
    # The same cap leaves room for an ordinary job: the worker trains on.
    assert fresh_stack.wait(fresh_stack.submit(tiny_spec())["id"])["status"] == "succeeded"


def test_idempotent_submit_returns_the_first_job(fresh_stack: Stack) -> None:
    spec = slow_spec("idem", queue="nowhere")
    first = fresh_stack.client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "k-1"})
    second = fresh_stack.client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    other = fresh_stack.client.post("/v1/jobs", json={**spec, "name": "other"},
                                    headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused"
    listed = fresh_stack.client.get("/v1/jobs").json()["data"]
    assert [j["id"] for j in listed] == [first.json()["id"]]


@ONE_BACKEND("postgres")
def test_sigterm_hands_the_job_back_without_using_an_attempt(fresh_stack: Stack) -> None:
    env = {"TRAINERY_FAULT_INJECTION": "slow@0:0.1/long"}
    # Both workers start first: a worker's start-up under a loaded CPU can outlast the
    # job, so the SIGTERM must not wait for it. Either may take the job.
    fresh_stack.start_worker("w1", env=env)
    fresh_stack.start_worker("w2", env=env)
    job = fresh_stack.submit(slow_spec("long", epochs=8))
    first = wait_running(fresh_stack, job["id"], min_epoch=2)["worker"].split("@")[0]
    other = ({"w1", "w2"} - {first}).pop()
    fresh_stack.stop_worker(first, signal.SIGTERM, timeout=30)
    done = fresh_stack.wait(job["id"], timeout=120)
    assert done["status"] == "succeeded" and done["worker"].startswith(f"{other}@")
    path = state_path(fresh_stack, job["id"])
    assert path == ["queued", "running", "queued", "running", "succeeded"]
    evs = events(fresh_stack, job["id"])
    assert [e for e in evs if "handed back" in e["message"]]
    # The runner checkpointed at the batch where it stopped, and the next attempt
    # resumed there: only the batches after it were trained again.
    saved = [e for e in evs if e["message"].startswith("checkpoint after")]
    resumed = [e for e in evs if e["message"].startswith("resumed from")]
    assert saved and resumed and resumed[0]["data"]["batch"] == saved[0]["data"]["batch"] > 0
    rows = fresh_stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [r["epoch"] for r in rows] == list(range(1, 9))


@ONE_BACKEND("sqlite")
def test_a_cancel_during_worker_shutdown_ends_cancelled_within_the_grace(
        fresh_stack: Stack) -> None:
    # One batch an epoch, then a 4 s sleep: right after the progress moves, the runner
    # sleeps inside a batch, so the shutdown's SIGTERM and then the cancel both reach
    # it before it stops.
    fresh_stack.start_worker("w1", env={"TRAINERY_FAULT_INJECTION": "slow@0:4/drain"})
    spec = slow_spec("drain", epochs=6)
    spec["training"]["batch_size"] = 1024
    job = fresh_stack.submit(spec)
    wait_running(fresh_stack, job["id"], min_epoch=1, timeout=90)
    os.killpg(fresh_stack.workers["w1"].pid, signal.SIGTERM)  # what stop_worker sends
    time.sleep(1.0)  # the supervisor has seen the shutdown and asked the runner to stop
    asked = time.monotonic()
    r = fresh_stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelling"
    done = fresh_stack.wait(job["id"], timeout=30)
    assert done["status"] == "cancelled", state_path(fresh_stack, job["id"])
    # Within the grace (the runner is killed at its end), plus a few seconds to record
    # the outcome on this busy machine; before the fix it sat in cancelling for good.
    assert time.monotonic() - asked < float(fresh_stack.env["TRAINERY_STOP_GRACE_S"]) + 5
    assert state_path(fresh_stack, job["id"]) == ["queued", "running", "cancelling",
                                                  "cancelled"]
    assert not [e for e in events(fresh_stack, job["id"]) if "worker lost" in e["message"]]
    fresh_stack.workers.pop("w1").wait(timeout=30)


@ONE_BACKEND("sqlite")
def test_poison_job_fails_with_worker_lost_after_max_attempts(fresh_stack: Stack) -> None:
    env = {"TRAINERY_FAULT_INJECTION": "kill_worker@0/poison", "TRAINERY_MAX_ATTEMPTS": "2"}
    fresh_stack.start_worker("w1", env=env)
    job = fresh_stack.submit(tiny_spec(epochs=3, name="poison"))
    deadline = time.monotonic() + 120
    while fresh_stack.job(job["id"])["status"] not in ("failed", "succeeded"):
        assert time.monotonic() < deadline
        if fresh_stack.workers["w1"].poll() is not None:  # killed by its job: restart it
            fresh_stack.workers.pop("w1")
            fresh_stack.start_worker("w1", env=env)
        time.sleep(0.2)
    done = fresh_stack.job(job["id"])
    assert done["status"] == "failed" and done["error"]["type"] == "worker_lost"
    assert "2 times" in done["error"]["message"]
    assert done["attempt"] == 2


def test_chaos_sigkill_workers_mid_epoch(fresh_stack: Stack) -> None:
    """SIGKILL the worker running a job, mid-epoch, five times; every job still finishes right."""
    rng = random.Random(7)
    epochs = 8
    env = {"TRAINERY_MAX_ATTEMPTS": "10"}  # one job may well be hit several times
    for name in ("c1", "c2"):
        fresh_stack.start_worker(name, env=env)
    jobs = [fresh_stack.submit(chaos_spec(f"chaos-{i}", epochs))["id"] for i in range(3)]
    kills: list[dict[str, Any]] = []
    deadline = time.monotonic() + 400
    while len(kills) < 5:
        assert time.monotonic() < deadline, f"only {len(kills)} kills"
        for job_id in jobs:
            assert len(runner_pids(job_id)) <= 1, "two runners for one job"
        running = [fresh_stack.job(j) for j in jobs]
        # A job whose current attempt has itself finished an epoch (its progress may be
        # the previous attempt's), so the kill lands in the middle of training rather
        # than in a runner's start-up.
        candidates = [j for j in running if j["status"] == "running"
                      and j["progress"]["epoch"] <= epochs - 2
                      and any(e["kind"] == "metrics" and e["attempt"] == j["attempt"]
                              for e in events(fresh_stack, j["id"]))]
        if not candidates:
            if all(j["status"] == "succeeded" for j in running):
                jobs.append(fresh_stack.submit(chaos_spec(f"chaos-{len(jobs)}", epochs))["id"])
            time.sleep(0.1)
            continue
        job = rng.choice(candidates)
        time.sleep(rng.uniform(0.2, 0.6))  # into the epoch
        job = fresh_stack.job(job["id"])
        if job["status"] != "running":
            continue
        name = job["worker"].split("@")[0]
        proc = fresh_stack.workers.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.time()
        proc.wait()
        kills.append({"job": job["id"], "at": killed_at, "attempt": job["attempt"]})
        fresh_stack.start_worker(name, env=env)
        # Wait for the job to run again (a new attempt) before the next kill.
        deadline_rerun = time.monotonic() + 120
        while fresh_stack.job(job["id"])["attempt"] <= job["attempt"]:
            assert time.monotonic() < deadline_rerun, "the killed job never ran again"
            time.sleep(0.1)

    for job_id in jobs:
        done = fresh_stack.wait(job_id, timeout=240)
        assert done["status"] == "succeeded", done["error"]
        rows = fresh_stack.client.get(f"/v1/jobs/{job_id}/metrics").json()
        assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
        path = state_path(fresh_stack, job_id)
        # Every run ended (requeued) before the next began: never two at once.
        assert path[0] == "queued" and path[-1] == "succeeded"
        assert all(a != b for a, b in zip(path, path[1:], strict=False))
        assert path.count("running") == done["attempt"]
        assert done["attempt"] == 1 + sum(k["job"] == job_id for k in kills)
        assert not runner_pids(job_id)

    lost, lost_epochs, recovery = [], [], []
    for k in kills:
        evs = events(fresh_stack, k["job"])
        # Training redone = time since this attempt's last saved epoch (each epoch's
        # metrics and checkpoint commit together), also in units of that epoch's length.
        saved = [e for e in evs if e["attempt"] == k["attempt"] and ts(e) <= k["at"]
                 and e["kind"] == "metrics"]
        lost.append(k["at"] - ts(saved[-1]))
        lost_epochs.append(lost[-1] / saved[-1]["data"]["epoch_time_s"])
        rerun = [e for e in evs if e["kind"] == "state" and e["to_status"] == "running"
                 and e["attempt"] == k["attempt"] + 1][0]
        recovery.append(ts(rerun) - k["at"])
    print(f"\nCHAOS kills={len(kills)} jobs={len(jobs)} lost_jobs=0 "
          f"work_lost_s median={statistics.median(lost):.2f} max={max(lost):.2f} "
          f"(in epochs: median={statistics.median(lost_epochs):.2f} max={max(lost_epochs):.2f}) "
          f"death_to_running_s median={statistics.median(recovery):.2f} max={max(recovery):.2f}")


@ONE_BACKEND("sqlite")
def test_redis_killed_and_restarted_and_flushed_loses_no_job(fresh_stack: Stack) -> None:
    redis = fresh_stack.redis  # type: ignore[attr-defined]
    fresh_stack.start_worker("w1")
    first = [fresh_stack.submit(chaos_spec(f"r{i}", epochs=3, n_samples=6000))["id"]
             for i in range(3)]
    wait_running(fresh_stack, first[0])
    redis.kill()
    # The API still accepts work while the broker is down: the row is the job.
    during = fresh_stack.submit(tiny_spec(name="during-outage"))["id"]
    time.sleep(1)
    redis.start()
    fresh_stack.wait(first[0], timeout=120)
    second = [fresh_stack.submit(chaos_spec(f"f{i}", epochs=3, n_samples=6000))["id"]
              for i in range(2)]
    redis.flushall()
    for job_id in [*first, during, *second]:
        assert fresh_stack.wait(job_id, timeout=180)["status"] == "succeeded"


@ONE_BACKEND("postgres")
def test_visibility_timeout_redelivery_never_runs_a_job_twice(
        database_url: str, tmp_path: Any, redis_server: Any) -> None:
    from tests.conftest import FAST_RECOVERY

    stack = Stack(database_url, tmp_path, broker_url=redis_server.url,
                  extra_env={**FAST_RECOVERY, "TRAINERY_BROKER_VISIBILITY_TIMEOUT_S": "2",
                             "TRAINERY_FAULT_INJECTION": "slow@0:0.05/long"})
    try:
        stack.start_api()
        stack.start_worker("v1")
        stack.start_worker("v2")
        job = stack.submit(slow_spec("long", epochs=10))
        done = stack.wait(job["id"], timeout=120)
        assert done["status"] == "succeeded" and done["attempt"] == 1
        assert state_path(stack, job["id"]) == ["queued", "running", "succeeded"]
        logs = stack.log_path("worker-v1").read_text() + stack.log_path("worker-v2").read_text()
        assert logs.count("Task trainery.wake[") >= 2, "the message was never redelivered"
    finally:
        stack.stop()


@ONE_BACKEND("postgres")
def test_a_keras_job_resumes_after_its_worker_is_killed(fresh_stack: Stack) -> None:
    env = {"TRAINERY_FAULT_INJECTION": "slow@0:0.01/keras-resume"}
    fresh_stack.start_worker("k1", env=env)
    spec = chaos_spec("keras-resume", epochs=5, n_samples=3000)
    spec["framework"] = "keras"
    job = fresh_stack.submit(spec)
    running = wait_running(fresh_stack, job["id"], min_epoch=2, timeout=120)
    proc = fresh_stack.workers.pop("k1")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fresh_stack.start_worker("k2", env=env)
    done = fresh_stack.wait(job["id"], timeout=180)
    assert done["status"] == "succeeded" and done["attempt"] == 2
    resumed = [e for e in events(fresh_stack, job["id"]) if "resumed from" in e["message"]]
    assert resumed and resumed[0]["data"]["epoch"] >= running["progress"]["epoch"]
    rows = fresh_stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [r["epoch"] for r in rows] == list(range(1, 6))
    assert rows[-1]["val_accuracy"] > 0.8
