"""The fleet launcher, /v1/workers, device checks and pending reasons, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.harness import ROOT, Stack
from tests.specs import tiny_spec

pytestmark = pytest.mark.integration


def workers(stack: Stack) -> dict[str, dict[str, Any]]:
    return {w["name"].split("@")[0]: w for w in stack.client.get("/v1/workers").json()["data"]}


def wait_for(predicate: Any, timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # SQL-independent
def test_fleet_starts_cpu_slots_restarts_a_dead_one_and_stops_on_sigterm(
        fresh_stack: Stack) -> None:
    env = {**fresh_stack.env, "TRAINERY_CPU_SLOTS": "2"}
    log = (fresh_stack.data_dir / "fleet.log").open("ab")
    fleet = subprocess.Popen([sys.executable, "-m", "workers.fleet"], cwd=ROOT, env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ws = wait_for(lambda: (w := workers(fresh_stack)) and len(w) == 2 and w, 90, "2 workers")
        assert set(ws) == {"cpu0", "cpu1"}
        assert all(w["state"] == "ready" and w["device"] == "cpu" for w in ws.values())
        assert ws["cpu0"]["queues"] == ["default", "gpu"]

        job = fresh_stack.submit(tiny_spec(epochs=2, resources={"gpus": 1}))
        done = fresh_stack.wait(job["id"], timeout=120)
        assert done["status"] == "succeeded"
        events = fresh_stack.client.get(f"/v1/jobs/{job['id']}/events").json()
        assert any("trains on the CPU" in e["message"] for e in events)

        # Kill one worker process: the fleet starts it again.
        old_pid = ws["cpu0"]["pid"]
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: workers(fresh_stack).get("cpu0", {}).get("pid") not in (None, old_pid),
                 90, "cpu0 restarted")
    finally:
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(timeout=120)
    assert fleet.returncode == 0
    wait_for(lambda: workers(fresh_stack) == {}, 30, "workers marked stopped")


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # SQL-independent
def test_a_worker_that_fails_its_device_check_takes_no_job(fresh_stack: Stack) -> None:
    # Pinned to a GPU this machine does not have: the check fails, the worker stays out.
    fresh_stack.start_worker("g0", queues=("gpu",), env={"CUDA_VISIBLE_DEVICES": "0"})
    job = fresh_stack.submit(tiny_spec(epochs=1, resources={"gpus": 1}))
    w = wait_for(lambda: workers(fresh_stack).get("g0"), 30, "g0 registered")
    assert w["state"] == "device_failed" and "CUDA" in w["detail"]
    time.sleep(3)
    queued = fresh_stack.job(job["id"])
    assert queued["status"] == "queued"
    assert "no live worker serves queue gpu" in queued["pending_reason"]
    assert "failed their device check" in queued["pending_reason"]
    assert "failed its device check" in fresh_stack.log_path("worker-g0").read_text()

    fresh_stack.start_worker("c0")
    assert fresh_stack.wait(job["id"], timeout=120)["status"] == "succeeded"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # SQL-independent
def test_pending_reason_counts_jobs_ahead_and_busy_workers(fresh_stack: Stack) -> None:
    fresh_stack.start_worker("w1", env={"TRAINERY_FAULT_INJECTION": "slow@0:0.05/slow"})
    first = fresh_stack.submit(tiny_spec(epochs=5, name="slow"))
    wait_for(lambda: fresh_stack.job(first["id"])["status"] == "running", 60, "first running")
    second = fresh_stack.submit(tiny_spec(epochs=1))
    third = fresh_stack.submit(tiny_spec(epochs=1))
    # Pending reasons read the fleet through the API process's snapshot, at most a second
    # old (docs/ARCHITECTURE.md, "Reads under load"): the claim shows within that.
    busy = "1 job(s) ahead in queue default; 1 CPU/GPU worker(s), busy"
    wait_for(lambda: fresh_stack.job(third["id"])["pending_reason"].startswith(busy), 10,
             "the reason to say the worker is busy")
    assert workers(fresh_stack)["w1"]["current_job"] == first["id"]
    for job in (first, second, third):
        assert fresh_stack.wait(job["id"], timeout=120)["status"] == "succeeded"
    nowhere = fresh_stack.submit(tiny_spec(resources={"queue": "gpu.a100"}))
    assert (fresh_stack.job(nowhere["id"])["pending_reason"]
            == "no live worker serves queue gpu.a100")


def test_more_gpus_than_the_service_allows_is_422(fresh_stack: Stack) -> None:
    r = fresh_stack.client.post("/v1/jobs", json=tiny_spec(resources={"gpus": 9}))
    assert r.status_code == 422
    assert r.json()["detail"][0]["path"] == "resources.gpus"
