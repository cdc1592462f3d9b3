"""A real stack for tests and benchmarks: a migrated database, a uvicorn API server and
Celery workers as subprocesses, on private ports and queue names."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from app.cli import LOOP, api_command

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("TRAINERY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TERMINAL = {"succeeded", "failed", "cancelled"}

POSTGRES_ADMIN_URL = os.environ.get(
    "TRAINERY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def create_postgres_database() -> str:
    """A fresh, empty PostgreSQL database; its SQLAlchemy URL."""
    import psycopg

    name = f"trainery_test_{uuid.uuid4().hex[:10]}"
    admin = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_postgres_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """An API server and workers on one database and one broker namespace."""

    def __init__(self, database_url: str, data_dir: Path, broker_url: str = REDIS_URL,
                 extra_env: dict[str, str] | None = None) -> None:
        self.database_url, self.data_dir, self.broker_url = database_url, data_dir, broker_url
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TRAINERY_DATABASE_URL": database_url,
            "TRAINERY_BROKER_URL": broker_url,
            "TRAINERY_QUEUE_PREFIX": self.prefix,
            "TRAINERY_DATA_DIR": str(data_dir),
            "TRAINERY_HEARTBEAT_INTERVAL_S": "0.5",
            # Several workers train side by side on a small machine: one thread each,
            # as `trainery worker` would share the cores among its slots.
            "TRAINERY_RUNNER_THREADS": "1",
            # A spare runner imports torch at every worker start: on a 2-core test box
            # with dozens of workers, most of which run a job or two, that is CPU spent
            # for nothing. Workers that run many jobs (the suite's shared ones), and
            # tests and benchmarks of warm runners, ask for a policy.
            "TRAINERY_WARM_RUNNERS": "off",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def log_path(self, name: str) -> Path:
        return self.data_dir / f"{name}.log"

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.log_path(name).open("ab")
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def start_api(self, processes: int = 1, loop: str = LOOP) -> None:
        """uvicorn on self.port; processes > 1: that many, under uvicorn's supervisor."""
        self.api = self._spawn("api", api_command("127.0.0.1", self.port, processes, loop),
                               self.env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.api.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError("API did not start:\n" + self.log_path("api").read_text()[-3000:])

    def start_worker(self, name: str = "w1", queues: Iterable[str] = ("default", "gpu"),
                     env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A real Celery worker process, as `trainery worker` starts one on a CPU-only machine."""
        qs = ",".join(f"{self.prefix}.{q}" for q in queues)
        proc = self._spawn(f"worker-{name}", [
            sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", qs,
            "--pool", "solo", "--concurrency", "1", "--prefetch-multiplier", "1",
            "--without-gossip", "--without-mingle", "-n", f"{name}@%h", "--loglevel", "INFO",
        ], {**self.env, **(env or {})})
        self.workers[name] = proc
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "ready." in self.log_path(f"worker-{name}").read_text(errors="replace"):
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError("worker did not start:\n"
                           + self.log_path(f"worker-{name}").read_text()[-3000:])

    def stop_worker(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        proc = self.workers.pop(name)
        _stop(proc, sig, timeout)

    def stop(self) -> None:
        for name in list(self.workers):
            self.stop_worker(name, signal.SIGQUIT, 10)
        if self.api is not None:
            _stop(self.api, signal.SIGTERM, 10)
        self.client.close()

    # -- helpers for tests --------------------------------------------------

    def submit(self, spec: dict[str, Any], **headers: str) -> dict[str, Any]:
        r = self.client.post("/v1/jobs", json=spec, headers=headers)
        assert r.status_code in (200, 201), r.text
        return r.json()  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def wait(self, job_id: str, statuses: Iterable[str] = TERMINAL,
             timeout: float = 180) -> dict[str, Any]:
        """Poll until the job reaches one of statuses."""
        wanted = set(statuses)
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while job["status"] not in wanted:
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s; "
                                     f"events: "
                                     f"{self.client.get(f'/v1/jobs/{job_id}/events').text[-2000:]}")
            time.sleep(0.25)
            job = self.job(job_id)
        return job


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def runner_processes(worker_pid: int) -> dict[int, str]:
    """The runner and spare processes a Stack worker started: pid -> command line (a spare
    that has preloaded ends in "(ready)"). Found by session: Stack starts each worker in
    a session of its own, which its children keep even after the worker dies."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        session = int(stat.rsplit(")", 1)[1].split()[3])
        if session == worker_pid and ("workers.spare" in cmdline or "workers.runner" in cmdline):
            found[int(entry.name)] = cmdline.strip()
    return found
