"""GPU discovery, pinning, routing and restarts of the worker fleet (no GPU needed)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.core.spec import JobSpec
from app.services.workers import route
from app.settings import Settings
from tests.specs import tiny_spec
from workers import devicecheck
from workers.fleet import Fleet, Gpu, Slot, celery_argv, discover_gpus, plan, pool_name

ROOT = Path(__file__).resolve().parents[2]


def fake_smi(tmp_path: Path, output: str, code: int = 0) -> str:
    path = tmp_path / "nvidia-smi"
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {code}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_discovery_asks_the_driver(tmp_path: Path) -> None:
    smi = fake_smi(tmp_path, "0, NVIDIA H100 80GB HBM3\n1, NVIDIA H100 80GB HBM3")
    assert discover_gpus(Settings(), smi) == [Gpu("0", "NVIDIA H100 80GB HBM3"),
                                               Gpu("1", "NVIDIA H100 80GB HBM3")]


def test_explicit_setting_wins_and_no_driver_means_no_gpu(tmp_path: Path) -> None:
    smi = fake_smi(tmp_path, "0, NVIDIA A100")
    assert [g.index for g in discover_gpus(Settings(gpus="2,3"), smi)] == ["2", "3"]
    assert discover_gpus(Settings(), str(tmp_path / "missing")) == []
    assert discover_gpus(Settings(), fake_smi(tmp_path, "", code=9)) == []


def test_one_pinned_worker_per_gpu() -> None:
    slots = plan(Settings(worker_queues="bulk"), [Gpu("0", "NVIDIA A100-SXM4-40GB"),
                                                  Gpu("1", "NVIDIA A100-SXM4-40GB")], "box")
    assert [s.name for s in slots] == ["gpu0@box", "gpu1@box"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1"]
    assert slots[0].queues == ["gpu", "gpu.a100", "default", "bulk"]
    argv = celery_argv(slots[1], Settings(queue_prefix="p"))
    assert argv[argv.index("-Q") + 1] == "p.gpu,p.gpu.a100,p.default,p.bulk"
    assert argv[argv.index("-n") + 1] == "gpu1@box"
    for flag, value in (("--pool", "solo"), ("--concurrency", "1"), ("--prefetch-multiplier", "1")):
        assert argv[argv.index(flag) + 1] == value


def test_cpu_slots_without_gpus() -> None:
    slots = plan(Settings(cpu_slots=2), [], "box")
    assert [s.name for s in slots] == ["cpu0@box", "cpu1@box"]
    assert all(s.env["CUDA_VISIBLE_DEVICES"] == "" for s in slots)
    assert slots[0].queues == ["default", "gpu"]
    strict = plan(Settings(cpu_takes_gpu_jobs=False), [], "box")
    assert strict[0].queues == ["default"]


def test_each_worker_gets_an_equal_share_of_the_cores_unless_set() -> None:
    cpu = plan(Settings(cpu_slots=2), [], "box", cpu_count=16)
    assert [s.env["TRAINERY_RUNNER_THREADS"] for s in cpu] == ["8", "8"]
    gpus = plan(Settings(), [Gpu(str(i), "x") for i in range(3)], "box", cpu_count=16)
    assert [s.env["TRAINERY_RUNNER_THREADS"] for s in gpus] == ["5", "5", "5"]
    assert plan(Settings(cpu_slots=4), [], "box", cpu_count=2)[0].env[
        "TRAINERY_RUNNER_THREADS"] == "1"  # never none
    explicit = plan(Settings(cpu_slots=2, runner_threads=3), [], "box", cpu_count=16)
    assert [s.env["TRAINERY_RUNNER_THREADS"] for s in explicit] == ["3", "3"]


def test_pool_names() -> None:
    assert pool_name("NVIDIA H100 80GB HBM3") == "gpu.h100"
    assert pool_name("NVIDIA GeForce RTX 4090") == "gpu.rtx4090"
    assert pool_name("Tesla T4") == "gpu.t4"


def test_routing() -> None:
    assert route(JobSpec.model_validate(tiny_spec())) == "default"
    assert route(JobSpec.model_validate(tiny_spec(resources={"gpus": 1}))) == "gpu"
    assert route(JobSpec.model_validate(tiny_spec(resources={"gpus": 1, "queue": "gpu.h100"}))) \
        == "gpu.h100"


def wait_lines(path: Path, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or path.read_text().count("\n") < n:
        assert time.monotonic() < deadline, f"{path} has fewer than {n} lines"
        time.sleep(0.05)


def test_a_dead_worker_process_is_restarted_and_sigterm_stops_all(tmp_path: Path) -> None:
    marker = tmp_path / "starts"

    def argv(slot: Slot, _settings: Settings) -> list[str]:
        code = ("import os, signal, sys, time\n"
                f"open({str(marker)!r}, 'a').write(os.environ['CUDA_VISIBLE_DEVICES'] + '\\n')\n"
                "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
                "time.sleep(60)\n")
        return [sys.executable, "-c", code]

    fleet = Fleet(Settings(), plan(Settings(gpus="0,1"), [Gpu("0", "x"), Gpu("1", "x")], "h"),
                  argv)
    fleet.poll_once()
    first = [s.proc for s in fleet.slots]
    assert all(p is not None and p.poll() is None for p in first)
    wait_lines(marker, 2)  # both children are up
    os.kill(first[0].pid, signal.SIGKILL)  # type: ignore[union-attr]
    first[0].wait()  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while fleet.slots[0].proc is first[0] or fleet.slots[0].proc is None:
        fleet.poll_once()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert fleet.slots[0].restarts == 1 and fleet.slots[1].proc is first[1]
    wait_lines(marker, 3)
    assert sorted(marker.read_text().split()) == ["0", "0", "1"]
    fleet.stop()
    assert all(s.proc is not None and s.proc.returncode == 0 for s in fleet.slots)


def test_a_worker_without_a_gpu_checks_for_a_framework_without_importing_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    probe = ("import json, sys; from workers.tasks import device_check; "
             "print(json.dumps([device_check(), 'torch' in sys.modules, "
             "'tensorflow' in sys.modules]))")
    for visible in ("", "-1"):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                             text=True, check=True, cwd=ROOT)
        verdict, torch_imported, tf_imported = json.loads(out.stdout.strip().splitlines()[-1])
        assert verdict["ok"] and verdict["device"] == "cpu", verdict
        assert "torch" in verdict["detail"] and not torch_imported and not tf_imported
    monkeypatch.setattr(devicecheck, "FRAMEWORK_MODULES", ("no_such_framework",))
    missing = devicecheck.cpu_check()
    assert not missing["ok"] and "neither torch nor tensorflow" in missing["detail"]
