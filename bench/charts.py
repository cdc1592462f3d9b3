"""How fast the server hands the charts their data: a 100k-step series downsampled to 1,000
points, the 20-run comparison and the job pages, through a real API on SQLite or PostgreSQL.

Seeded through the service's own code (submit, claim, record_epoch, the step store's
batched upsert, succeed). Each figure is the median wall time of a full HTTP answer
(request to last byte) over --repeat requests, on a warm server. Target: under 300 ms for
the downsampled step series and for the 20-run comparison page. Baselines in the same run:
one run's 1,000-epoch series (what a chart of 1,000 points costs without downsampling), and
reading the 100k steps' rows whole in-process (what shipping the raw series would start with).

    python -m bench.charts [--steps 100000] [--runs 20] [--epochs 1000] [--repeat 7] [--postgres]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from app.core.spec import JobSpec
from app.db import make_engine, make_sessionmaker, migrate, transaction
from app.models import StepMetric
from app.services import jobs, lifecycle, steps
from app.services.unit_of_work import UnitOfWork
from app.settings import Limits
from bench.stack import Stack, create_postgres_database, drop_postgres_database
from bench.web_charts import seed as seed_runs

TARGET_MS = 300.0
BATCH_STEPS = 2_000  # steps per upsert statement while seeding (a long epoch's worth)


def seed_steps(url: str, n_steps: int) -> str:
    """One succeeded job with n_steps logged steps (loss, accuracy, lr), one spike among them."""
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    spec = JobSpec.model_validate({
        "name": "steps", "framework": "pytorch", "dataset": {"builtin": "iris"},
        "model": {"preset": "mlp"}, "training": {"epochs": 10, "log_every_steps": 1}})
    try:
        with transaction(factory) as session:
            job, _ = jobs.submit(UnitOfWork(session), spec, owner="default",
                                 idempotency_key=None, limits=Limits())
            attempt = lifecycle.claim(session, job.id, "bench")
            assert attempt is not None
        for start in range(1, n_steps + 1, BATCH_STEPS):
            rows = [(s, {"loss": math.exp(-s / n_steps * 4) + 0.05 * math.sin(s)
                         + (5.0 if s == n_steps // 3 else 0.0),
                         "accuracy": 1 - 0.9 * math.exp(-s / n_steps * 4),
                         "lr": 1e-3 * (0.5 + 0.5 * math.cos(math.pi * s / n_steps))})
                    for s in range(start, min(start + BATCH_STEPS, n_steps + 1))]
            with transaction(factory) as session:
                steps.record(session, job.id, rows)
        with transaction(factory) as session:
            lifecycle.record_epoch(session, job.id, attempt, 10, 10, {"loss": 0.1}, None)
            lifecycle.succeed(session, job.id, attempt)
        return job.id
    finally:
        engine.dispose()


def cpu_ms(pid: int | None) -> float:
    """CPU time (user + system) a process has used so far, in ms; 0 without a pid."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def median_ms(fn: Callable[[], object], repeat: int, pid: int | None = None) -> tuple[float, float]:
    """The median wall time of fn in ms after one warm-up call, and the mean CPU time
    process pid spent per call: the server's own cost, which other load inflates less."""
    fn()
    times = []
    cpu = cpu_ms(pid)
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), (cpu_ms(pid) - cpu) / repeat


def main() -> None:
    """Seed, serve, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--postgres", action="store_true", help="a fresh PostgreSQL database "
                        "instead of a SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainery-bench-charts-") as tmp:
        url = create_postgres_database() if args.postgres else \
            f"sqlite:///{Path(tmp) / 'trainery.db'}"
        try:
            migrate(url)
            started = time.perf_counter()
            ids = seed_runs(url, args.runs, args.epochs)
            big = seed_steps(url, args.steps)
            print(f"seeded {args.runs} runs x {args.epochs} epochs and {args.steps} steps x 3 "
                  f"metrics in {time.perf_counter() - started:.0f} s "
                  f"({'PostgreSQL' if args.postgres else 'SQLite'})")
            run(url, Path(tmp), ids, big, args)
        finally:
            if args.postgres:
                drop_postgres_database(url)


def run(url: str, tmp: Path, ids: list[str], big: str, args: argparse.Namespace) -> None:
    """Serve the seeded database and print each figure against its baseline."""
    stack = Stack(url, tmp)
    stack.start_api()
    try:
        client = stack.client

        def get(path: str, **params: str | int) -> Callable[[], int]:
            def call() -> int:
                r = client.get(path, params=params)
                assert r.status_code == 200, r.text[:300]
                return len(r.content)
            return call

        series = client.get(f"/v1/jobs/{big}/metrics",
                            params={"series": "steps", "max_points": args.points}).json()
        spike = max(series["metrics"]["loss"]["max"])
        rows: list[tuple[str, float, float, int]] = []
        pid = stack.api.pid if stack.api is not None else None

        def measure(label: str, call: Callable[[], int]) -> float:
            ms, cpu = median_ms(call, args.repeat, pid)
            rows.append((label, ms, cpu, call()))
            return ms

        base = measure(f"baseline: 1 run's epoch series ({args.epochs} epochs)",
                       get(f"/v1/jobs/{ids[0]}/metrics"))
        down = measure(f"step series, {args.steps} steps -> {len(series['steps'])} points",
                       get(f"/v1/jobs/{big}/metrics", series="steps", max_points=args.points))
        measure(f"step series, {args.steps} steps -> {steps.MAX_POINTS} points (the cap)",
                get(f"/v1/jobs/{big}/metrics", series="steps", max_points=steps.MAX_POINTS))
        one = measure("baseline: /compare, 1 run", get("/compare", ids=ids[0]))
        many = measure(f"/compare, {len(ids)} runs x {args.epochs} epochs",
                       get("/compare", ids=",".join(ids)))
        measure(f"job page with {args.steps} steps", get(f"/jobs/{big}"))
    finally:
        stack.stop()
    engine = make_engine(url)
    factory = make_sessionmaker(engine)

    def raw() -> int:
        with factory() as session:
            return len(session.execute(select(StepMetric.name, StepMetric.step, StepMetric.value)
                                       .where(StepMetric.job_id == big)).all())
    raw_ms, raw_cpu = median_ms(raw, args.repeat, os.getpid())
    engine.dispose()

    where = "API process" + (" (not PostgreSQL's)" if args.postgres else "")
    print(f"{'':<58} {'wall':>8}     {'CPU of the ' + where}")
    for label, ms, cpu, size in rows:
        print(f"{label:<58} {ms:8.1f} ms  {cpu:8.1f} ms  ({size / 1e3:.1f} kB)")
    print(f"{'baseline: the raw step rows read in-process, no HTTP':<58} {raw_ms:8.1f} ms  "
          f"{raw_cpu:8.1f} ms")
    print(f"the spike (loss {spike:.2f}) survives downsampling: "
          f"{'yes' if spike > 5 else 'NO'}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load}")
    for label, ms, ref, ref_label in ((f"downsampled {args.steps} steps", down, base,
                                       "1 run's epochs"),
                                      (f"/compare of {len(ids)} runs", many, one, "1 run")):
        verdict = "under" if ms < TARGET_MS else "OVER"
        print(f"{label}: {ms:.1f} ms, {ms / ref:.2f}x {ref_label}; {verdict} the "
              f"{TARGET_MS:.0f} ms target (median of {args.repeat})")


if __name__ == "__main__":
    main()
