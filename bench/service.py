"""The API under load: pollers of one job and of the job list, and SSE followers.

Starts a real API (bench/stack.py: uvicorn on a loopback port) on a store seeded
through the service's own code (one job submitted by app.services.jobs.submit, then
copied in bulk through the ORM's insert: the older ones finished, the newest
QUEUED_TAIL queued, as a busy service's history looks), and loads it with wrk where it
is installed (`apt install wrk`: C, one thread, a few percent of a core at these
rates, so the server has the cores; a phase is bounded by time, and bench/wrk_load.lua
prints its figures), else with plain keep-alive http.client connections on threads of
this process (httpx's async client topped out near 100 requests/s here). The paced
pollers and the SSE followers are always this program's own.

For each database and store size it prints, in one run and side by side:
`GET /healthz`, `GET /v1/jobs/{id}` (a queued job: its pending reason is computed; then
each poller its own job, the newest 64: queued and ended ones) and `GET /v1/jobs` (the
first page), each with p50/p99, the request rate and its ratio to /healthz, against the
targets (p99 <= 50 ms, >= 0.5x /healthz, 0 errors, p99 at the largest store <= 1.5x
p99 at the smallest): 64 pollers, each sending its next request as soon as the last is
answered (the most the server gives). In that closed loop the server is saturated, and
a request's latency is the pollers' number over the rate (Little's law), for /healthz
as much as for a poll: the p99 is printed beside /healthz's own, and beside the share
of CPU time the hypervisor took meanwhile (a virtual machine's stalls hit every
request in flight). The same GETs are also measured at the pace SDK pollers poll (each
every --paced-interval-s, 0.2 s: the SDK's first interval; latency from when each
request was due). Then, on the smallest store,
SSE: FOLLOWERS followers of FOLLOWED running jobs while this process appends log
events through app.services.lifecycle; every follower must get every event once,
in order, then `end`; p99 event latency (event ts -> received) <= 1 s; the API's
SQL statements per second (its trainery_db_statements counter) with a tenth of the
followers and with all of them; and GET /v1/jobs/{id} under the same load: 64 pollers
in a closed loop (the rate), then 64 at the SDK's pace (the p99 <= 50 ms), from a
process of its own (this one's GIL is busy reading the streams).

    python -m bench.service [--dbs sqlite,postgres] [--sizes 1000,100000]
                            [--requests 4000] [--followers 1000] [--quick]
                            [--paced-interval-s 0.2] [--paced-s 8] [--api-processes 1]
                            [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, select, text

from app.cli import LOOP
from app.core.spec import JobSpec
from app.core.states import JobStatus
from app.db import make_engine, make_sessionmaker, migrate, transaction
from app.models import Job, utcnow
from app.services import jobs, lifecycle
from app.services.unit_of_work import UnitOfWork
from app.settings import get_settings
from bench.stack import Stack, create_postgres_database, drop_postgres_database

OWNER = "default"  # the stack's default owner: requests carry no key
QUEUED_TAIL = 20
P99_TARGET_MS = 50.0
RATE_TARGET = 0.5
GROWTH_TARGET = 1.5
EVENT_LATENCY_TARGET_S = 1.0
SPEC = {"name": "seed", "framework": "pytorch", "dataset": {"builtin": "iris"},
        "model": {"preset": "mlp"}, "training": {"epochs": 3, "batch_size": 16}}


# -- the store ----------------------------------------------------------------

@contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    """A fresh, migrated database of kind (sqlite or postgres): its URL."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'trainery.db'}"
        migrate(url)
        yield url
        return
    url = create_postgres_database()
    try:
        migrate(url)
        yield url
    finally:
        drop_postgres_database(url)


def seed(url: str, n: int, own: int = 64) -> tuple[str, list[str]]:
    """n jobs: one submitted through the job service, the rest its copies; a queued job's
    id, and the `own` newest jobs' ids (the queued ones and the latest to end)."""
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    settings = get_settings()
    try:
        with transaction(factory) as session:
            template, _ = jobs.submit(UnitOfWork(session), JobSpec.model_validate(SPEC),
                                      owner=OWNER, limits=settings.limits, idempotency_key=None)
            columns = {c.key: getattr(template, c.key) for c in Job.__table__.columns}
        start = utcnow() - timedelta(days=30)
        rows = []
        for i in range(n - 1):
            queued = i >= n - 1 - QUEUED_TAIL
            status = (JobStatus.QUEUED if queued else
                      JobStatus.FAILED if i % 10 == 0 else JobStatus.SUCCEEDED).value
            created = start + timedelta(seconds=i)
            rows.append({**columns, "id": f"{columns['id'][:-8]}{i:08d}", "name": f"seed-{i}",
                         "status": status, "created_at": created, "updated_at": created,
                         "finished_at": None if queued else created + timedelta(seconds=5)})
        for chunk in range(0, len(rows), 5000):
            with transaction(factory) as session:
                session.execute(insert(Job), rows[chunk:chunk + 5000])
        with engine.connect() as conn:  # statistics, as autovacuum or a nightly job keeps them
            conn.execute(text("ANALYZE"))
            conn.commit()
        with factory() as session:
            newest = session.scalar(select(Job.id).where(Job.status == JobStatus.QUEUED.value)
                                    .order_by(Job.created_at.desc()).limit(1))
            latest = list(session.scalars(select(Job.id).order_by(Job.created_at.desc())
                                          .limit(own)))
        assert newest is not None
        return newest, latest
    finally:
        engine.dispose()


# -- the load generator: keep-alive connections on threads -----------------------

@dataclass
class Load:
    """What one load phase measured: each latency, or (from wrk) its quantiles."""

    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0
    answered: int | None = None  # from wrk: the 2xx answers (else len(latencies_s))
    quantiles_ms: dict[float, float] = field(default_factory=dict)  # from wrk: 0.5, 0.99
    stolen: float | None = None  # the CPU time the hypervisor took meanwhile (a share)

    def steal(self) -> str:
        return "" if self.stolen is None else f"  stolen {100 * self.stolen:.0f}%"

    @property
    def rate(self) -> float:
        n = len(self.latencies_s) if self.answered is None else self.answered
        return n / self.wall_s if self.wall_s else 0.0

    def p(self, q: float) -> float:
        """Latency quantile q in ms."""
        if q in self.quantiles_ms:
            return self.quantiles_ms[q]
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def get(conn: http.client.HTTPConnection, port: int, path: str
        ) -> tuple[http.client.HTTPConnection, bool]:
    """GET path on conn: the connection to go on with (a new one after a failure), and
    whether the answer was a 200."""
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return conn, response.status == 200
    except (OSError, http.client.HTTPException):
        conn.close()
        return http.client.HTTPConnection("127.0.0.1", port, timeout=30), False


WRK = shutil.which("wrk")
WRK_SCRIPT = Path(__file__).with_name("wrk_load.lua")


def load(port: int, path: str | list[str], connections: int, requests: int, max_s: float
         ) -> Load:
    """GET path for max_s over `connections` keep-alive connections, each sending its next
    request when the last is answered: with wrk where it is installed (C, one thread: a
    few percent of a core at this load), else from threads of this process (which then
    share the cores with the server; they also stop after `requests`)."""
    before = cpu_times()
    run = (load_wrk if WRK is not None else load_threads)(port, path, connections, requests,
                                                          max_s)
    run.stolen = stolen(before, cpu_times())
    return run


def cpu_times() -> tuple[int, int] | None:
    """(steal, all) CPU time of this machine so far, in ticks (Linux), else None."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(t) for t in stat.readline().split()[1:]]
    except OSError:
        return None
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks[:8])


def stolen(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of CPU time the hypervisor gave other machines between two readings: a
    virtual machine's stalls, which no server can help."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def load_wrk(port: int, path: str | list[str], connections: int, requests: int, max_s: float
             ) -> Load:
    """load() by wrk, for max_s (wrk bounds a run by time only: a thread stopped early
    still counts the whole -d, which would understate the rate); for a list of paths,
    each request GETs the next."""
    paths = [path] if isinstance(path, str) else path
    env = {**os.environ, "WRK_PATHS": " ".join(paths)}
    argv = [str(WRK), "-t1", f"-c{connections}", f"-d{max_s:g}s", "--timeout", "30s",
            "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=max_s + 60)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    errors = sum(figures[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Load(errors=errors, wall_s=figures["duration_us"] / 1e6,
                answered=figures["requests"] - figures["status"],
                quantiles_ms={0.5: figures["p50_us"] / 1000, 0.99: figures["p99_us"] / 1000})


def load_threads(port: int, path: str | list[str], connections: int, requests: int,
                 max_s: float) -> Load:
    """load() from keep-alive http.client connections on threads; for a list of paths,
    connection k GETs path[k % len(path)]."""
    paths = [path] if isinstance(path, str) else path
    result = Load()
    lock = threading.Lock()
    left = [requests]
    deadline = time.monotonic() + max_s
    barrier = threading.Barrier(connections + 1)

    def poller(k: int) -> None:
        mine_path = paths[k % len(paths)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.connect()
        mine: list[float] = []
        errors = 0
        barrier.wait()
        while time.monotonic() < deadline:
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            started = time.perf_counter()
            conn, ok = get(conn, port, mine_path)
            if ok:
                mine.append(time.perf_counter() - started)
            else:
                errors += 1
        conn.close()
        with lock:
            result.latencies_s.extend(mine)
            result.errors += errors

    threads = [threading.Thread(target=poller, args=(k,), daemon=True)
               for k in range(connections)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    result.wall_s = time.perf_counter() - started
    return result


def paced(port: int, path: str | list[str], connections: int, interval_s: float,
          duration_s: float) -> Load:
    """Each connection GETs path (connection k: path[k % len(path)] of a list) once every
    interval_s, staggered, as SDK pollers do.

    Open loop: a request's latency counts from when it was due, so a request sent
    late because the one before was slow counts that wait (no coordinated omission).
    """
    paths = [path] if isinstance(path, str) else path
    result = Load()
    lock = threading.Lock()
    start = time.perf_counter() + 0.5
    end = start + duration_s

    def poller(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.connect()
        mine: list[float] = []
        errors = 0
        due = start + k * interval_s / connections
        while due < end:
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            conn, ok = get(conn, port, paths[k % len(paths)])
            if ok:
                mine.append(time.perf_counter() - due)
            else:
                errors += 1
            due += interval_s
        conn.close()
        with lock:
            result.latencies_s.extend(mine)
            result.errors += errors

    threads = [threading.Thread(target=poller, args=(k,), daemon=True)
               for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall_s = time.perf_counter() - start  # past `end` when answers came late
    return result


def statements(port: int) -> float:
    """The API process's trainery_db_statements_total."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("trainery_db_statements_total"))


# -- SSE followers: one selector, raw sockets ------------------------------------

class Follower:
    """One event stream read off a raw socket: HTTP/1.1 chunked, then SSE frames."""

    def __init__(self, port: int, job_id: str) -> None:
        self.job_id = job_id
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.sock.sendall(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: bench\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
        self.raw = b""
        self.headers_done = False
        self.body = b""
        self.ids: list[int] = []
        self.latencies_s: list[float] = []
        self.ended = False
        self.status = 0

    def feed(self, data: bytes, now: float) -> None:
        self.raw += data
        if not self.headers_done:
            head, sep, rest = self.raw.partition(b"\r\n\r\n")
            if not sep:
                return
            self.status = int(head.split(b" ", 2)[1])
            self.headers_done, self.raw = True, rest
        while True:  # chunked transfer encoding
            size_line, sep, rest = self.raw.partition(b"\r\n")
            if not sep:
                break
            size = int(size_line, 16)
            if len(rest) < size + 2:
                break
            self.body += rest[:size]
            self.raw = rest[size + 2:]
            if size == 0:
                self.ended = True
        while b"\n\n" in self.body:
            frame, _, self.body = self.body.partition(b"\n\n")
            self._frame(frame.decode(), now)

    def _frame(self, frame: str, now: float) -> None:
        fields = dict(line.split(": ", 1) for line in frame.splitlines()
                      if ": " in line and not line.startswith(":"))
        if fields.get("event") == "end":
            self.ended = True
        elif "id" in fields:
            self.ids.append(int(fields["id"]))
            data = json.loads(fields["data"])
            if data["message"].startswith("bench-t "):
                self.latencies_s.append(now - float(data["message"].split()[1]))


def follow(followers: list[Follower], until: Callable[[], bool], max_s: float) -> None:
    """Read every follower's socket until until() or max_s."""
    selector = selectors.DefaultSelector()
    for each in followers:
        selector.register(each.sock, selectors.EVENT_READ, each)
    deadline = time.monotonic() + max_s
    while not until() and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.2):
            f: Follower = key.data
            data = f.sock.recv(65536)
            if not data:
                f.ended = True
                selector.unregister(f.sock)
                continue
            f.feed(data, time.time())
    selector.close()


def running_jobs(url: str, n: int) -> list[tuple[str, int]]:
    """n jobs submitted through the service and claimed, as a worker would: (id, attempt)."""
    factory = make_sessionmaker(make_engine(url))
    settings = get_settings()
    claimed = []
    with transaction(factory) as session:
        for i in range(n):
            spec = JobSpec.model_validate({**SPEC, "name": f"followed-{i}"})
            job, _ = jobs.submit(UnitOfWork(session), spec, owner=OWNER,
                                 limits=settings.limits, idempotency_key=None)
            session.flush()
            attempt = lifecycle.claim(session, job.id, "bench")
            assert attempt is not None
            claimed.append((job.id, attempt))
    return claimed


@dataclass
class SseRun:
    followers: int
    delivered_ok: bool
    problems: list[str]
    latency_p99_s: float
    events: int
    statements_per_s: float
    get_during: Load | None
    paced_during: Load | None
    connected_s: float


def sse(url: str, port: int, job_count: int, per_job: int, rate_per_job: float,
        window_s: float, get_requests: int, paced_interval_s: float = 0.0,
        paced_s: float = 0.0, get_max_s: float = 60.0) -> SseRun:
    """per_job followers on each of job_count running jobs; events appended at
    rate_per_job a job a second for the window (then GET load, if asked, while they go
    on, then pollers at the SDK's pace, each of one of the followed jobs); then the jobs
    succeed and every follower must have got every event, once, in order."""
    factory = make_sessionmaker(make_engine(url))
    claimed = running_jobs(url, job_count)
    connect_started = time.monotonic()
    followers = [Follower(port, job_id) for job_id, _ in claimed for _ in range(per_job)]
    stop = threading.Event()
    produced = [0]

    def produce() -> None:
        interval = 1.0 / rate_per_job
        while not stop.is_set():
            with transaction(factory) as session:
                for job_id, attempt in claimed:
                    lifecycle.add_event(session, job_id, f"bench-t {time.time():.6f}",
                                        attempt=attempt)
            produced[0] += len(claimed)
            stop.wait(interval)

    reader_stop = threading.Event()
    reader = threading.Thread(target=follow, args=(followers, reader_stop.is_set, 600),
                              daemon=True)
    reader.start()
    # Connecting 1,000 followers is 1,000 admitted requests: wait until every one has its
    # backlog, so the window below measures the steady state, and latencies count only
    # events appended after a follower was there.
    deadline = time.monotonic() + 300
    while not all(f.ids for f in followers) and time.monotonic() < deadline:
        time.sleep(0.1)
    connected_s = time.monotonic() - connect_started
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    time.sleep(1.0)
    before, started = statements(port), time.monotonic()
    time.sleep(window_s)
    per_s = (statements(port) - before) / (time.monotonic() - started)
    get_during = (load(port, f"/v1/jobs/{claimed[0][0]}", 64, get_requests, get_max_s)
                  if get_requests else None)
    paced_during = None
    if get_requests and paced_interval_s > 0:
        # From a process of its own: this one's GIL is busy reading a thousand streams.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            paced_during = pool.submit(paced, port, [f"/v1/jobs/{j}" for j, _ in claimed], 64,
                                       paced_interval_s, paced_s).result()
    stop.set()
    producer.join()
    with transaction(factory) as session:
        for job_id, attempt in claimed:
            lifecycle.transition(session, job_id, [JobStatus.RUNNING], JobStatus.SUCCEEDED,
                                 "bench done", expect_attempt=attempt)
    deadline = time.monotonic() + 60
    while not all(f.ended for f in followers) and time.monotonic() < deadline:
        time.sleep(0.1)
    reader_stop.set()
    reader.join()
    problems = []
    expected: dict[str, list[int]] = {}
    for job_id, _ in claimed:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", f"/v1/jobs/{job_id}/events")
        expected[job_id] = [e["id"] for e in json.loads(conn.getresponse().read())]
        conn.close()
    for f in followers:
        if f.status != 200 or not f.ended or f.ids != expected[f.job_id]:
            problems.append(f"follower of {f.job_id}: status {f.status}, ended {f.ended}, "
                            f"{len(f.ids)} of {len(expected[f.job_id])} events")
    for f in followers:
        f.sock.close()
    latencies = sorted(x for f in followers for x in f.latencies_s)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
    return SseRun(len(followers), not problems, problems[:5], p99, produced[0], per_s,
                  get_during, paced_during, connected_s)


# -- the report -------------------------------------------------------------------

def mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report_get(name: str, run: Load, health: Load) -> None:
    """A closed-loop phase: its rate against /healthz's (the target), and its latency, which
    at a saturated server is the pollers' number over its rate (Little's law): compare
    it with /healthz's own p99 in the same loop; the paced phases measure latency."""
    ratio = run.rate / health.rate if health.rate else 0.0
    fast = run.p(0.99) <= P99_TARGET_MS and run.errors == 0
    ok = ratio >= RATE_TARGET and run.errors == 0
    print(f"  {name:<22} p50 {run.p(0.5):6.1f} ms  p99 {run.p(0.99):6.1f} ms "
          f"(<= {P99_TARGET_MS:g}) [{mark(fast)}] ({run.p(0.99) / health.p(0.99):4.2f}x "
          f"healthz's)  {run.rate:6.0f} req/s = {ratio:4.2f}x healthz (>= {RATE_TARGET}) "
          f"[{mark(ok)}]  errors {run.errors}{run.steal()}", flush=True)


def report_paced(port: int, job_id: str, own_paths: list[str], args: argparse.Namespace
                 ) -> None:
    every = args.paced_interval_s
    print(f"  paced: {args.connections} pollers, each one GET every {every:g} s "
          f"({args.connections / every:.0f} req/s offered) for {args.paced_s:g} s, latency "
          "from when each was due:", flush=True)
    paths: tuple[tuple[str, str | list[str]], ...] = (
        ("GET /healthz", "/healthz"), ("GET /v1/jobs/{id}", f"/v1/jobs/{job_id}"),
        ("  each its own job", own_paths), ("GET /v1/jobs (page 1)", "/v1/jobs"))
    for name, path in paths:
        run = paced(port, path, args.connections, every, args.paced_s)
        ok = run.p(0.99) <= P99_TARGET_MS and run.errors == 0
        verdict = "" if path == "/healthz" else f" (<= {P99_TARGET_MS:g}) [{mark(ok)}]"
        print(f"    {name:<22} p50 {run.p(0.5):6.1f} ms  p99 {run.p(0.99):7.1f} ms{verdict}"
              f"  {run.rate:5.0f} req/s answered  errors {run.errors}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dbs", default="sqlite,postgres")
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4000, help="per GET phase")
    parser.add_argument("--max-s", type=float, default=30.0, help="per GET phase")
    parser.add_argument("--paced-interval-s", type=float, default=0.2,
                        help="also poll at a fixed pace (the SDK's first interval); 0: skip")
    parser.add_argument("--paced-s", type=float, default=8.0, help="per paced phase")
    parser.add_argument("--api-processes", type=int, default=1,
                        help="uvicorn --workers N (docker-compose runs 2); > 1 skips SSE")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default=LOOP,
                        help=f"the API's event loop (`trainery api` runs {LOOP})")
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--followed-jobs", type=int, default=10)
    parser.add_argument("--event-rate", type=float, default=2.0, help="events/s per job")
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true",
                        help="SQLite, 1k and 10k jobs, 1,500 requests, 200 followers")
    args = parser.parse_args(argv)
    if args.quick:
        args.dbs, args.sizes, args.requests, args.followers = "sqlite", "1000,10000", 1500, 200
        args.window_s = 5.0
    sizes = [int(s) for s in args.sizes.split(",")]
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    generator = (f"wrk ({WRK})" if WRK else "threads of this process (install wrk for a "
                 "generator that leaves the cores to the server)")
    print(f"closed-loop load generator: {generator}; the API's event loop: {args.loop}",
          flush=True)
    for kind in args.dbs.split(","):
        p99s: dict[int, tuple[float, float]] = {}
        for size in sizes:
            with tempfile.TemporaryDirectory(prefix="trainery-bench-") as tmp, \
                    database(kind, Path(tmp)) as url:
                t0 = time.perf_counter()
                job_id, own = seed(url, size, args.connections)
                own_paths = [f"/v1/jobs/{i}" for i in own]
                print(f"{kind}, {size} jobs (seeded in {time.perf_counter() - t0:.1f} s), "
                      f"{args.api_processes} API process(es), {args.connections} keep-alive "
                      "pollers:", flush=True)
                stack = Stack(url, Path(tmp))
                stack.start_api(args.api_processes, args.loop)
                try:
                    phase = (args.connections, args.requests, args.max_s)
                    load(stack.port, "/healthz", 8, 200, 10)  # warm up
                    health = load(stack.port, "/healthz", *phase)
                    one = load(stack.port, f"/v1/jobs/{job_id}", *phase)
                    mine = load(stack.port, own_paths, *phase)
                    page = load(stack.port, "/v1/jobs", *phase)
                    print(f"  {'GET /healthz':<22} p50 {health.p(0.5):6.1f} ms  p99 "
                          f"{health.p(0.99):6.1f} ms  {health.rate:7.0f} req/s  "
                          f"errors {health.errors}{health.steal()}", flush=True)
                    report_get("GET /v1/jobs/{id}", one, health)
                    report_get("  each its own job", mine, health)
                    report_get("GET /v1/jobs (page 1)", page, health)
                    p99s[size] = (one.p(0.99), page.p(0.99))
                    if args.paced_interval_s > 0:
                        report_paced(stack.port, job_id, own_paths, args)
                    if size == sizes[0] and args.api_processes == 1:
                        run_sse(url, stack.port, args)  # counts one process's statements
                finally:
                    stack.stop()
        if len(sizes) > 1:
            small, large = p99s[sizes[0]], p99s[sizes[-1]]
            for i, name in enumerate(("GET /v1/jobs/{id}", "GET /v1/jobs (page 1)")):
                growth = large[i] / small[i] if small[i] else 0.0
                print(f"  {kind} {name}: p99 at {sizes[-1]} / at {sizes[0]} = {growth:.2f}x "
                      f"(<= {GROWTH_TARGET}) [{mark(growth <= GROWTH_TARGET)}]", flush=True)
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)


def run_sse(url: str, port: int, args: argparse.Namespace) -> None:
    jobs_n = args.followed_jobs
    runs = []
    for total, gets in ((args.followers // 10, 0), (args.followers, args.requests)):
        run = sse(url, port, jobs_n, max(1, total // jobs_n), args.event_rate, args.window_s,
                  gets, args.paced_interval_s, args.paced_s, args.max_s)
        runs.append(run)
        ok = run.delivered_ok and run.latency_p99_s <= EVENT_LATENCY_TARGET_S
        print(f"  SSE {run.followers:>5} followers of {jobs_n} running jobs (all connected and "
              f"served their backlog in {run.connected_s:.1f} s): {run.events} events "
              f"appended, every one delivered once in order to every follower: "
              f"{run.delivered_ok}; p99 event latency {run.latency_p99_s * 1000:.0f} ms "
              f"(<= {EVENT_LATENCY_TARGET_S * 1000:.0f}); API SQL statements "
              f"{run.statements_per_s:.1f}/s [{mark(ok)}]", flush=True)
        for problem in run.problems:
            print(f"    {problem}")
        if run.get_during is not None:
            g = run.get_during
            print(f"  GET /v1/jobs/{{id}} meanwhile, 64 pollers in a closed loop: p50 "
                  f"{g.p(0.5):.1f} ms, p99 {g.p(0.99):.1f} ms (<= {P99_TARGET_MS:g}) "
                  f"[{mark(g.p(0.99) <= P99_TARGET_MS and g.errors == 0)}], {g.rate:.0f} "
                  f"req/s, errors {g.errors}{g.steal()}", flush=True)
        if run.paced_during is not None:
            g = run.paced_during
            print(f"  GET /v1/jobs/{{id}} meanwhile, 64 pollers each every "
                  f"{args.paced_interval_s:g} s: p99 {g.p(0.99):.1f} ms (<= {P99_TARGET_MS:g}), "
                  f"errors {g.errors} [{mark(g.p(0.99) <= P99_TARGET_MS and g.errors == 0)}]",
                  flush=True)
    few, many = runs
    ratio = many.statements_per_s / few.statements_per_s if few.statements_per_s else 0.0
    print(f"  SQL statements/s with {many.followers} followers / with {few.followers}: "
          f"{ratio:.2f}x (independent of followers: ~1x) [{mark(ratio <= 1.5)}]", flush=True)


if __name__ == "__main__":
    main()
