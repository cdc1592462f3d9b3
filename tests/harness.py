"""Real parts for tests: a migrated database, a uvicorn server and Celery workers
as subprocesses (the stack itself lives in bench/stack.py, which benchmarks share)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from app.db import migrate
from bench.stack import (
    REDIS_URL,
    ROOT,
    TERMINAL,
    Stack,
    create_postgres_database,
    drop_postgres_database,
    free_port,
)

__all__ = ["REDIS_URL", "ROOT", "TERMINAL", "RedisServer", "Stack", "create_postgres_database",
           "drop_postgres_database", "free_port", "migrate", "plain_python"]

def plain_python(code: str, cwd: Path, framework_module: str = "torch") -> str:
    """Run code in a Python that has the framework but not this project; its stdout.

    `-I -S` skips site-packages' .pth files (where an editable install of this
    project lives) and the working directory; we add back only site-packages.
    """
    import importlib.util

    spec = importlib.util.find_spec(framework_module)
    assert spec is not None and spec.origin is not None
    site = str(Path(spec.origin).resolve().parent.parent)
    prelude = (
        "import sys, importlib.util\n"
        f"sys.path.append({site!r})\n"
        "assert importlib.util.find_spec('app') is None, 'project importable'\n"
        "assert importlib.util.find_spec('workers') is None, 'project importable'\n"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", prelude + code], cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


class RedisServer:
    """A private redis-server on a free loopback port, which tests may kill and restart."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.data_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def flushall(self) -> None:
        import redis

        redis.Redis(port=self.port).flushall()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
