"""Warm runners: a runner per job, forked from a template (PyTorch) or a spare of its own
(Keras), nothing shared between jobs, nothing left behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from bench.stack import runner_processes
from tests.harness import Stack
from tests.specs import tiny_spec

pytestmark = pytest.mark.integration
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def start_phases(stack: Stack, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The "training on" event's data and the "first optimizer step" event's start phases."""
    events = stack.client.get(f"/v1/jobs/{job_id}/events").json()
    training = [e["data"] for e in events if e["message"].startswith("training on")]
    first = [e["data"]["start"] for e in events
             if e["message"].startswith("first optimizer step")]
    assert len(training) == 1 and len(first) == 1, [e["message"] for e in events]
    return training[0], first[0]


def metrics(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    rows = stack.client.get(f"/v1/jobs/{job_id}/metrics").json()
    return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in rows]


def run(stack: Stack, spec: dict[str, Any]) -> str:
    job = stack.submit(spec)
    assert stack.wait(job["id"], timeout=240)["status"] == "succeeded"
    return str(job["id"])


@SQLITE
def test_same_spec_on_one_worker_gives_identical_metrics_each_from_its_own_spare(
        fresh_stack: Stack) -> None:
    worker = fresh_stack.start_worker("w1", env={"TRAINERY_WARM_RUNNERS": "last"})
    a = tiny_spec(epochs=2, name="a", training={"epochs": 2, "batch_size": 16, "seed": 5})
    b = tiny_spec(epochs=3, name="b", training={"epochs": 3, "batch_size": 8, "seed": 9,
                                                "optimizer": {"name": "sgd", "lr": 0.1}})
    jobs = [run(fresh_stack, spec) for spec in (a, a, b, a)]
    first = metrics(fresh_stack, jobs[0])
    assert first and metrics(fresh_stack, jobs[1]) == first  # bit-identical: exact floats
    assert metrics(fresh_stack, jobs[3]) == first  # after a different job, as if it ran first
    pids = set()
    for i, job_id in enumerate(jobs):
        training, start = start_phases(fresh_stack, job_id)
        assert training["cpu_threads"] == 1  # the job's TRAINERY_RUNNER_THREADS
        assert training["start"]["pid"] == start["pid"]
        pids.add(start["pid"])
        assert start["since"] == "claim" and start["queued_s"] <= 0
        assert 0 <= start["runner_started_s"] <= start["data_ready_s"] \
            <= start["model_ready_s"] <= start["first_step_s"]
        # Its runner is a fork of the template the worker started before the job was
        # claimed: spawned then, forked after the claim once the template had imported
        # (the first job may come while it still imports, and waits for it).
        assert start["spawned_s"] < 0 <= start["forked_s"] <= start["runner_started_s"], start
        assert start["imported_s"] <= start["forked_s"], start
        if i > 0:
            assert start["warm"] is True and start["imported_s"] < 0, start
    assert len(pids) == len(jobs)  # one process per job
    assert not {int(pid) for pid in pids} & set(runner_processes(worker.pid))  # all ended

    # And the same as a cold runner (`python -m workers.runner`, nothing preloaded).
    fresh_stack.stop_worker("w1")
    fresh_stack.start_worker("w2", env={"TRAINERY_WARM_RUNNERS": "off"})
    cold = run(fresh_stack, a)
    assert metrics(fresh_stack, cold) == first
    _, start = start_phases(fresh_stack, cold)
    assert start["warm"] is False and "spawned_s" not in start

    # And the same as a spare of its own (no template).
    fresh_stack.stop_worker("w2")
    fresh_stack.start_worker("w3", env={"TRAINERY_FORK_RUNNERS": "false"})
    spare = run(fresh_stack, a)
    assert metrics(fresh_stack, spare) == first
    _, start = start_phases(fresh_stack, spare)
    assert "forked_s" not in start and start["pid"] not in pids


@SQLITE
def test_a_sigkilled_worker_leaves_no_runner_and_no_spare(fresh_stack: Stack) -> None:
    worker = fresh_stack.start_worker("w1", env={"TRAINERY_WARM_RUNNERS": "last"})
    wait_for(lambda: [c for c in runner_processes(worker.pid).values() if c.endswith("(ready)")],
             120, "no spare ready")
    # Its warm-up imported what every job's end needs: the onnx package (its extension
    # module is mapped), which the ONNX export would otherwise import in each job.
    [template] = runner_processes(worker.pid)
    assert "onnx_cpp2py_export" in Path(f"/proc/{template}/maps").read_text()
    job = fresh_stack.submit(tiny_spec(epochs=200, name="long"))
    fresh_stack.wait(job["id"], statuses={"running"}, timeout=60)
    # The job's runner and the template it was forked from.
    wait_for(lambda: len(runner_processes(worker.pid)) == 2, 60, "no runner and spare")
    os.kill(worker.pid, signal.SIGKILL)  # the worker alone, not its process group
    worker.wait()
    fresh_stack.workers.pop("w1")
    wait_for(lambda: not runner_processes(worker.pid), 10,
             f"orphans: {runner_processes(worker.pid)}")


@SQLITE
def test_worker_shutdown_stops_its_spares(fresh_stack: Stack) -> None:
    worker = fresh_stack.start_worker("w1", env={"TRAINERY_WARM_RUNNERS": "both"})
    wait_for(lambda: len(runner_processes(worker.pid)) == 2, 60, "two spares expected")
    os.kill(worker.pid, signal.SIGTERM)
    worker.wait(timeout=60)
    fresh_stack.workers.pop("w1")
    assert not runner_processes(worker.pid)


@SQLITE
def test_keras_and_pytorch_jobs_alternate_on_one_worker_without_leaking(
        fresh_stack: Stack) -> None:
    fresh_stack.start_worker("w1", env={"TRAINERY_WARM_RUNNERS": "both"})
    keras = tiny_spec("keras", epochs=2, name="k")
    jobs = [run(fresh_stack, spec) for spec in (keras, tiny_spec(epochs=2), keras)]
    assert metrics(fresh_stack, jobs[2]) == metrics(fresh_stack, jobs[0])
    _, start = start_phases(fresh_stack, jobs[2])
    assert start["spawned_s"] < 0  # the Keras spare waited through the PyTorch job
    events = fresh_stack.client.get(f"/v1/jobs/{jobs[2]}/events").json()
    imported = [e["data"]["frameworks"] for e in events if "frameworks" in (e["data"] or {})]
    assert imported == [["tensorflow"]]

    fresh_stack.stop_worker("w1")
    fresh_stack.start_worker("w2", env={"TRAINERY_WARM_RUNNERS": "off"})
    assert metrics(fresh_stack, run(fresh_stack, keras)) == metrics(fresh_stack, jobs[0])


def test_a_spare_whose_environment_changed_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import Settings
    from workers.warmpool import WarmPool

    pool = WarmPool(Settings(warm_runners="last"))
    try:
        pool.fill()
        old = pool.spares["pytorch"]
        pool.fill()
        assert pool.spares["pytorch"] is old  # nothing changed: kept
        monkeypatch.setenv("TRAINERY_RUNNER_THREADS", "3")
        pool.fill()
        new = pool.spares["pytorch"]
        assert new is not old and old.proc.returncode is not None  # discarded and stopped
        assert new.env["TRAINERY_RUNNER_THREADS"] == "3" and new.alive()
    finally:
        pool.close()
    assert new.proc.returncode is not None and not pool.spares


def test_a_runner_waiting_for_its_template_is_killed_with_it_or_starts_cold_without_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A job handed to a template that still imports waits for its fork; killed meanwhile
    (a cancel, a timeout), it never runs and the template goes; if the template dies
    first, the job's runner starts cold; either way the next job gets a fresh template."""
    from app.settings import Settings
    from workers.warmpool import ForkedProc, WarmPool

    # The cold runner below runs for a job no store has: it fails, in this directory.
    monkeypatch.setenv("TRAINERY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TRAINERY_DATABASE_URL", f"sqlite:///{tmp_path / 'none.db'}")
    pool = WarmPool(Settings(warm_runners="pytorch"))
    try:
        pool.fill()
        template = pool.spares["pytorch"]
        waiting = pool.start("pytorch", "job_never_forked", 1, "cpu")
        assert isinstance(waiting.proc, ForkedProc) and waiting.proc.pid is None  # importing
        waiting.proc.kill()
        assert waiting.proc.wait(timeout=30) == -signal.SIGKILL
        assert template.proc.wait(timeout=30) is not None  # the template went with it
        waiting.close()

        pool.fill()
        second = pool.spares["pytorch"]
        assert second is not template and second.alive()
        orphan = pool.start("pytorch", "job_started_cold", 1, "cpu")
        assert isinstance(orphan.proc, ForkedProc) and orphan.proc.pid is None
        second.proc.kill()  # dies before it forked the runner
        code = orphan.proc.wait(timeout=240)
        assert code > 0 and orphan.proc.pid is not None  # a cold runner ran, and failed
        assert b"exited before it forked this runner; started cold" in \
            orphan.log_path.read_bytes()
        orphan.close()

        pool.fill()
        third = pool.spares["pytorch"]
        assert third is not second and third.alive()
    finally:
        pool.close()
