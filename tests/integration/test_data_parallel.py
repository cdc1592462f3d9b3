"""Data-parallel jobs through a real stack: three CPU slots on one host stand in for three
GPUs (gloo instead of NCCL). One stack for the module, on SQLite (the gang claim's SQL is
tested on both backends in tests/unit/test_gang_claim.py)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.stack import Stack, runner_processes
from tests.conftest import FAST_RECOVERY
from tests.harness import migrate
from tests.specs import tiny_spec

SLOTS = ("s1", "s2", "s3")


@pytest.fixture(scope="module")
def three_slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("ddp")
    url = f"sqlite:///{tmp / 'trainery.db'}"
    migrate(url)
    # Slow batches (named jobs only) keep jobs running long enough to look at them.
    s = Stack(url, tmp, extra_env={**FAST_RECOVERY,
                                   "TRAINERY_FAULT_INJECTION": "slow@0:0.05/slow"})
    try:
        s.start_api()
        for name in SLOTS:
            s.start_worker(name)
        yield s
    finally:
        s.stop()


def mlp_spec(gpus: int, name: str = "ddp", epochs: int = 3, framework: str = "pytorch",
             **training: Any) -> dict[str, Any]:
    """An iris MLP without dropout (dropout masks differ between one and two replicas)."""
    return tiny_spec(
        framework, name=name, epochs=epochs, resources={"gpus": gpus},
        model={"layers": [{"type": "dense", "units": 32, "activation": "relu"}]},
        dataset={"builtin": "iris", "validation_split": 0.2},
        training={"epochs": epochs, "batch_size": 18, "optimizer": {"name": "sgd", "lr": 0.1},
                  **training})


def losses(stack: Stack, job_id: str) -> list[float]:
    rows = stack.client.get(f"/v1/jobs/{job_id}/metrics").json()
    return [r["loss"] for r in rows]


def wait_for(predicate: Any, timeout: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _rank_pids(stack: Stack, job_id: str) -> dict[int, int]:
    """rank -> pid of the job's rank processes (their argv ends SLOTS RANK PROCS RENDEZVOUS)."""
    found = {}
    for proc in stack.workers.values():
        for pid, cmdline in runner_processes(proc.pid).items():
            words = cmdline.split()
            if job_id in words and len(words) >= 4:
                found[int(words[-3])] = pid
    return found


def test_a_killed_rank_costs_the_attempt_and_the_job_resumes(three_slots: Stack) -> None:
    job = three_slots.submit(mlp_spec(2, name="slow", epochs=3))
    wait_for(lambda: (three_slots.job(job["id"])["progress"]["epoch"] or 0) >= 1, what="epoch 1")
    busy = {w["name"].split("@")[0]: w["current_job"]
            for w in three_slots.client.get("/v1/workers").json()["data"]}
    assert sorted(busy.values(), key=str).count(job["id"]) == 2  # both slots show the job
    ranks = _rank_pids(three_slots, job["id"])
    assert sorted(ranks) == [0, 1]
    os.kill(ranks[1], signal.SIGKILL)
    done = three_slots.wait(job["id"], timeout=240)
    assert done["status"] == "succeeded" and done["attempt"] == 2
    rows = three_slots.client.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    events = three_slots.client.get(f"/v1/jobs/{job['id']}/events").json()
    assert any("rank 1 died by SIGKILL; the group was stopped" in e["message"] for e in events)
    assert any(e["message"].startswith("resumed from the checkpoint") for e in events)
    for pid in ranks.values():  # the whole first group is gone
        assert not Path(f"/proc/{pid}").exists()


def test_two_pairs_and_a_single_share_three_slots_and_agree(three_slots: Stack) -> None:
    first = three_slots.submit(mlp_spec(2, name="slow"))
    second = three_slots.submit(mlp_spec(2, name="slow"))
    single = three_slots.submit(mlp_spec(1, name="slow"))
    wait_for(lambda: three_slots.job(first["id"])["status"] == "running", what="the first pair")
    # The second pair heads the queue: the free slot waits for it, the single waits behind.
    reason = three_slots.job(second["id"])["pending_reason"]
    assert reason.startswith("needs 2 free GPUs on one host; hosts: "), reason
    assert reason.endswith("(1 of 3 free)"), reason
    for job in (first, second, single):
        assert three_slots.wait(job["id"], timeout=300)["status"] == "succeeded"
    # The same spec on one rank and on two: 120 training rows in global batches of 18
    # (9 + 9 per rank; the last, 12, as 6 + 6); the same data, order and initial weights.
    # Only float summation order differs (two ranks' gradients are averaged), which in
    # fp32 over 21 SGD steps stays far below 1e-4 relative.
    one, two = losses(three_slots, single["id"]), losses(three_slots, first["id"])
    assert len(one) == len(two) == 3
    assert two == pytest.approx(one, rel=1e-4)
    events = three_slots.client.get(f"/v1/jobs/{first['id']}/events").json()
    assert any(e["message"].startswith("data-parallel on 2 slots") for e in events)
    assert any("DistributedDataParallel over 2 processes (gloo)" in e["message"] for e in events)
    model = three_slots.client.get(f"/v1/jobs/{first['id']}/model")
    assert model.status_code == 200 and model.content[:2] == b"PK"  # a TorchScript zip


def test_keras_on_two_devices_gives_the_loss_of_one(three_slots: Stack) -> None:
    one = three_slots.submit(mlp_spec(1, framework="keras"))
    two = three_slots.submit(mlp_spec(2, framework="keras"))
    for job in (one, two):
        assert three_slots.wait(job["id"], timeout=300)["status"] == "succeeded"
    # MirroredStrategy over two logical CPU devices, the same shares and weighting as DDP.
    assert losses(three_slots, two["id"]) == pytest.approx(losses(three_slots, one["id"]),
                                                           rel=1e-4)
    events = three_slots.client.get(f"/v1/jobs/{two['id']}/events").json()
    assert any("MirroredStrategy over 2 devices" in e["message"] for e in events)
    assert three_slots.client.get(f"/v1/jobs/{two['id']}/model").status_code == 200


def test_no_rank_outlives_its_worker_and_cancel_stops_every_rank(three_slots: Stack) -> None:
    job = three_slots.submit(mlp_spec(2, name="slow", epochs=100))
    wait_for(lambda: len(_rank_pids(three_slots, job["id"])) == 2, what="two ranks")
    leader = three_slots.job(job["id"])["worker"].split("@")[0]
    first = _rank_pids(three_slots, job["id"])
    three_slots.workers[leader].kill()  # SIGKILL: the worker cleans nothing up
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in first.values()), timeout=10,
             what="the ranks to die with their worker")
    three_slots.workers[leader].wait()
    three_slots.start_worker(leader)
    # The reaper requeues the job; a new group starts; a cancel stops all of it.
    wait_for(lambda: three_slots.job(job["id"])["attempt"] == 2
             and len(_rank_pids(three_slots, job["id"])) == 2, what="the second attempt's ranks")
    second = _rank_pids(three_slots, job["id"])

    def trains_again() -> bool:  # the group is past start-up: the stop is a batch boundary's
        events = three_slots.client.get(f"/v1/jobs/{job['id']}/events").json()
        return any(e["kind"] == "metrics" and e["attempt"] == 2 for e in events)

    wait_for(trains_again, what="an epoch of the second attempt")
    assert three_slots.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    assert three_slots.wait(job["id"], timeout=60)["status"] == "cancelled"
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in second.values()), timeout=10,
             what="every rank to stop")
    events = three_slots.client.get(f"/v1/jobs/{job['id']}/events").json()
    assert any(e["message"] == "cancelled: stopped at a batch boundary" for e in events)
