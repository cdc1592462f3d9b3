"""Start latency: a job's `queued` event -> its runner's first optimizer step, on a real stack.

Starts an API and one Celery worker (bench/stack.py: SQLite in a temporary directory,
the local Redis under a private queue prefix), then for each framework submits tiny
jobs (1-epoch iris) one after another, each when the previous one has finished and
the worker's spare runner for that framework has finished preloading ("an idle warm
worker"). The runner records its start phases in the job's "first optimizer step"
event (workers/phases.py); this program reads them through the API. The same run
measures a bare `python -c "import torch"` (and tensorflow) as the cold baseline, and
then the same PyTorch jobs on a worker with TRAINERY_FORK_RUNNERS=false (a spare per
job instead of forks of a template), and, unless --cold-jobs 0, on a worker with
TRAINERY_WARM_RUNNERS=off. Beside the latencies it prints the CPU time the machine spent
per measured job (all processes, from /proc/stat: the API, the worker, the runner, and
replacing the spare the job used), which is what a busy worker pays per job, and each
job's time from its submit to its end (its exports included).

    python -m bench.start_latency [--jobs 12] [--frameworks pytorch,keras] [--cold-jobs 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from app.db import migrate
from bench.stack import Stack, runner_processes

IMPORTS = {"pytorch": "torch", "keras": "tensorflow"}
PHASES = ("runner_started", "framework_ready", "data_ready", "model_ready", "first_step")


def tiny(framework: str, i: int) -> dict[str, Any]:
    return {"name": f"start-{framework}-{i}", "framework": framework,
            "dataset": {"builtin": "iris"}, "model": {"preset": "mlp"},
            "training": {"epochs": 1, "batch_size": 16, "seed": i}}


def bare_import(module: str, repeats: int) -> list[float]:
    """Wall seconds of `python -c "import module"`, each in a fresh interpreter."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True,
                       stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        times.append(time.perf_counter() - start)
    return times


def busy_cpu_s() -> float:
    """CPU seconds this machine has spent not idle since boot (all cores, /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_spare_ready(worker_pid: int, framework: str, timeout: float = 180) -> None:
    """Until a spare (or a template) for framework has preloaded."""
    deadline = time.monotonic() + timeout
    while not any(f"workers.spare {framework}" in cmd and cmd.endswith("(ready)")
                  for cmd in runner_processes(worker_pid).values()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no ready {framework} spare after {timeout}s")
        time.sleep(0.05)


def run_job(stack: Stack, spec: dict[str, Any]) -> dict[str, Any]:
    """Submit spec, wait for it; its start phases (seconds since the claim), and under
    "done_s" the seconds from its submit to its end (created_at -> finished_at: the
    whole job, its exports included, as its user waits for its model)."""
    job = stack.submit(spec)
    done = stack.wait(job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    events = stack.client.get(f"/v1/jobs/{job['id']}/events").json()
    starts = [e["data"]["start"] for e in events
              if e["message"].startswith("first optimizer step")]
    assert len(starts) == 1, [e["message"] for e in events]
    ended = datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(
        done["created_at"])
    return {**starts[0], "done_s": ended.total_seconds()}


def latency(start: dict[str, Any]) -> float:
    """queued event -> first optimizer step, in seconds."""
    return float(start["first_step_s"] - start["queued_s"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Measured:
    """One worker's measured jobs of one framework, and the machine's CPU time they took."""

    starts: list[dict[str, Any]]
    cpu_s: float


def report(label: str, measured: Measured) -> None:
    starts = measured.starts
    lat = [latency(s) for s in starts]
    p50, p95 = statistics.median(lat), percentile(lat, 0.95)
    warm = sum(bool(s["warm"]) for s in starts)
    done = statistics.median(s["done_s"] for s in starts)
    print(f"  {label}: n={len(lat)} warm={warm}  p50 {p50:.3f}s  p95 {p95:.3f}s  "
          f"p95/p50 {p95 / p50:.2f}  min {min(lat):.3f}s  max {max(lat):.3f}s  "
          f"CPU {measured.cpu_s / len(starts):.2f}s a job  submit -> succeeded p50 {done:.2f}s")
    parts = [f"claim {statistics.median(-s['queued_s'] for s in starts):.3f}"]
    for phase in PHASES:
        values = [s[f"{phase}_s"] - s["queued_s"] for s in starts if f"{phase}_s" in s]
        if values:
            parts.append(f"{phase.replace('_', ' ')} {statistics.median(values):.3f}")
    print("    median s after queued: " + ", ".join(parts))


def measure(stack: Stack, worker: str, frameworks: list[str], jobs: int, warm: bool,
            env: dict[str, str]) -> dict[str, Measured]:
    proc = stack.start_worker(worker, env=env)
    results: dict[str, Measured] = {}
    try:
        for framework in frameworks:
            # A first job per framework (not counted): with the "last" policy it is
            # the one that switches the worker's spare to this framework.
            run_job(stack, tiny(framework, 0))
            if warm:
                wait_spare_ready(proc.pid, framework)
            cpu = busy_cpu_s()
            starts = []
            for i in range(1, jobs + 1):
                if i > 1 and warm:
                    wait_spare_ready(proc.pid, framework)
                elif i > 1:
                    time.sleep(1.0)
                starts.append(run_job(stack, tiny(framework, i)))
            if warm:  # the spare the last job used is replaced too
                wait_spare_ready(proc.pid, framework)
            results[framework] = Measured(starts, busy_cpu_s() - cpu)
    finally:
        stack.stop_worker(worker)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=12, help="measured jobs per framework")
    parser.add_argument("--cold-jobs", type=int, default=3,
                        help="jobs per framework on a worker without spares (0: skip)")
    parser.add_argument("--frameworks", default="pytorch,keras")
    parser.add_argument("--policy", default="both", choices=["last", "both"],
                        help="TRAINERY_WARM_RUNNERS of the warm worker")
    parser.add_argument("--import-repeats", type=int, default=3)
    args = parser.parse_args()
    # SIGTERM (a timeout) still runs the finally that stops the stack's processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]

    print(f"load average before: {os.getloadavg()}")
    print("bare interpreter, cold import (median of "
          f"{args.import_repeats}):")
    baseline = {}
    for framework in frameworks:
        times = bare_import(IMPORTS[framework], args.import_repeats)
        baseline[framework] = statistics.median(times)
        print(f"  python -c 'import {IMPORTS[framework]}': {baseline[framework]:.3f}s "
              f"(runs: {', '.join(f'{t:.2f}' for t in times)})")

    with tempfile.TemporaryDirectory(prefix="trainery-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'trainery.db'}"
        migrate(url)
        stack = Stack(url, Path(tmp))
        try:
            stack.start_api()
            warm = measure(stack, "warm", frameworks, args.jobs, True,
                           {"TRAINERY_WARM_RUNNERS": args.policy})
            spares = (measure(stack, "spares", ["pytorch"], args.jobs, True,
                              {"TRAINERY_WARM_RUNNERS": args.policy,
                               "TRAINERY_FORK_RUNNERS": "false"})
                      if "pytorch" in frameworks else {})
            cold = (measure(stack, "cold", frameworks, args.cold_jobs, False,
                            {"TRAINERY_WARM_RUNNERS": "off"})
                    if args.cold_jobs else {})
        finally:
            stack.stop()

    print("job queued -> first optimizer step (1-epoch iris, one worker, "
          "TRAINERY_RUNNER_THREADS=1):")
    for framework in frameworks:
        print(f" {framework}:")
        forked = framework == "pytorch"
        report(f"warm runner ({args.policy}{', forked from a template' if forked else ''})",
               warm[framework])
        if framework in spares:
            report(f"warm runner ({args.policy}, a spare per job: TRAINERY_FORK_RUNNERS=false)",
                   spares[framework])
        if framework in cold:
            report("cold runner (off)", cold[framework])
        p50 = statistics.median(latency(s) for s in warm[framework].starts)
        print(f"  warm p50 / bare `import {IMPORTS[framework]}`: "
              f"{p50 / baseline[framework]:.2f}")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
