"""Runner processes, started before their job: one spare per framework, already imported.

A runner still runs one job attempt and dies with its worker; what changes is when it
starts. The worker keeps a spare (`python -m workers.spare FRAMEWORK`) that has imported
the framework and the project and waits on its stdin; a job is handed to it as one JSON
line, and a new spare starts at once for the next job. `TRAINERY_WARM_RUNNERS` says
which spares a worker keeps: `last` (default) one for the framework it ran last
(PyTorch before the first job), `both` one per framework (more memory: an idle
PyTorch spare holds ~0.25 GB, a TensorFlow one ~0.5 GB), `off` none. Without a usable
spare a job's runner starts cold, `python -m workers.runner JOB ATTEMPT RESULT`, as
before. A spare is started with exactly the environment a job's runner gets; if the
worker's environment (or runner Python) changed since, or the spare died, it is
discarded and the job's runner starts cold.

A runner's stdout and stderr go to a private file (its tail goes into a failed job's
events); its log records go to the worker's own stderr, through a copy of that descriptor
every runner inherits, with the job, attempt, worker and request id in their context
(`RunContext`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from app.settings import Settings

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ("pytorch", "keras")
PR_SET_PDEATHSIG = 1


def runner_preexec(memory_bytes: int | None) -> None:
    """Runs in the runner child before exec: it dies with its worker and gets its data cap."""
    # If the worker is SIGKILLed, the kernel kills its runners and spares too, so a lost
    # worker never leaves a training process behind that could race the job's next
    # attempt. The signal follows the *thread* that forked: spawn only from the worker's
    # main thread.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if memory_bytes is not None:
        limit_data(memory_bytes)


def limit_data(memory_bytes: int) -> None:
    """Cap this process's data segment (RLIMIT_DATA): past it an allocation fails (MemoryError,
    or the framework's out-of-memory error) instead of growing until the machine swaps or
    the kernel's OOM killer picks a victim.

    RLIMIT_DATA, not RLIMIT_AS: since Linux 4.7 it counts private writable mappings (heap,
    anonymous mmap, thread stacks), what a job's arrays and tensors live in, but not the
    address space that CUDA and TensorFlow reserve without using, nor mapped libraries, so
    it caps real use without breaking a framework's start. A hard limit of the worker's
    own below memory_bytes wins.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        memory_bytes = min(memory_bytes, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, hard))


@dataclass(frozen=True)
class RunContext:
    """What a runner's log lines say about where they come from, and where they go."""

    worker: str | None = None
    request_id: str | None = None  # of the request whose wake-up started the runner
    log_fd: int | None = None  # the worker's stderr, inherited; None: the runner's own

    def to_arg(self) -> str:
        """The runner's CONTEXT argument (JSON)."""
        return json.dumps({"worker": self.worker, "request_id": self.request_id,
                           "log_fd": self.log_fd})


def runner_env() -> dict[str, str]:
    """The environment a job's runner gets: the worker's own (threads, CUDA_VISIBLE_DEVICES,
    TRAINERY_*), unbuffered."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@dataclass
class RunnerProcess:
    """One runner process with its private directory: its log and its result file."""

    framework: str
    python: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    tmp: tempfile.TemporaryDirectory[str]
    log_file: IO[bytes]
    job: str | None = field(default=None)

    @classmethod
    def spawn(cls, framework: str, python: str, env: dict[str, str], log_fd: int | None,
              job: tuple[str, int, str, RunContext] | None = None,
              memory_bytes: int | None = None) -> RunnerProcess:
        """Start a spare for framework (it preloads, then waits for `hand`), or, given a
        job, a cold `python -m workers.runner JOB ATTEMPT RESULT DEVICE CONTEXT` for it.
        Either inherits log_fd, where its log lines go, and has its data segment capped
        at memory_bytes (None: no cap)."""
        tmp = tempfile.TemporaryDirectory(prefix="trainery-")
        log_file = (Path(tmp.name) / "runner.log").open("wb")
        if job is None:
            argv, stdin = ["-m", "workers.spare", framework], subprocess.PIPE
        else:
            result = Path(tmp.name) / "result.json"
            argv, stdin = ["-m", "workers.runner", job[0], str(job[1]), str(result), job[2],
                           job[3].to_arg()], None
        proc = subprocess.Popen([python, *argv], cwd=PROJECT_ROOT, env=env, stdin=stdin,
                                stdout=log_file, stderr=subprocess.STDOUT,
                                pass_fds=() if log_fd is None else (log_fd,),
                                preexec_fn=functools.partial(runner_preexec, memory_bytes))
        return cls(framework, python, env, proc, tmp, log_file, job[0] if job else None)

    @property
    def result_path(self) -> Path:
        return Path(self.tmp.name) / "result.json"

    @property
    def log_path(self) -> Path:
        return Path(self.tmp.name) / "runner.log"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def hand(self, job_id: str, attempt: int, device: str, context: RunContext) -> None:
        """Give this runner its job (on the device the worker verified); OSError if it is gone."""
        assert self.proc.stdin is not None and self.job is None
        line = {"argv": [job_id, str(attempt), str(self.result_path), device, context.to_arg()],
                "handed_at": time.time()}
        self.proc.stdin.write(json.dumps(line).encode() + b"\n")
        self.proc.stdin.close()
        self.job = job_id

    def close(self) -> None:
        """Stop the process if it still runs, and remove its files."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log_file.close()
        self.tmp.cleanup()


class WarmPool:
    """The spares of one worker; used from the worker's main thread only."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = settings.warm_runners
        self.spares: dict[str, RunnerProcess] = {}
        self.last = FRAMEWORKS[0]
        self.closed = False
        self._log_fd: int | None = None

    @property
    def log_fd(self) -> int:
        """A copy of this process's stderr for the runners to inherit (made at first use)."""
        if self._log_fd is None:
            self._log_fd = os.dup(sys.stderr.fileno())
        return self._log_fd

    @property
    def python(self) -> str:
        return self.settings.runner_python or sys.executable

    def wanted(self) -> list[str]:
        """The frameworks this worker keeps a spare for now."""
        if self.closed or self.policy == "off":
            return []
        return list(FRAMEWORKS) if self.policy == "both" else [self.last]

    def _usable(self, spare: RunnerProcess) -> bool:
        if not spare.alive():
            log.warning("the %s spare runner exited (%s) before its job; see its log:\n%s",
                        spare.framework, spare.proc.returncode,
                        spare.log_path.read_text(errors="replace")[-2000:])
            return False
        if spare.env != runner_env() or spare.python != self.python:
            log.info("the %s spare runner's environment is stale; starting a fresh one",
                     spare.framework)
            return False
        return True

    def fill(self) -> None:
        """Start the spares the policy wants and drop the others (or the stale)."""
        wanted = self.wanted()
        for framework, spare in list(self.spares.items()):
            if framework not in wanted or not self._usable(spare):
                del self.spares[framework]
                spare.close()
        for framework in wanted:
            if framework not in self.spares:
                self.spares[framework] = RunnerProcess.spawn(
                    framework, self.python, runner_env(), self.log_fd,
                    memory_bytes=self.settings.resolved_runner_memory())
                log.info("started a %s spare runner (pid %d)", framework,
                         self.spares[framework].proc.pid)

    def start(self, framework: str, job_id: str, attempt: int, device: str,
              worker: str | None = None, request_id: str | None = None) -> RunnerProcess:
        """A runner running attempt of job_id: the spare if usable, else a fresh one; then
        the next spare starts. Its log lines name worker and request_id."""
        context = RunContext(worker, request_id, self.log_fd)
        self.last = framework
        runner = self.spares.pop(framework, None)
        if runner is not None and not self._usable(runner):
            runner.close()
            runner = None
        if runner is not None:
            try:
                runner.hand(job_id, attempt, device, context)
            except OSError:  # it died since _usable looked
                runner.close()
                runner = None
        if runner is None:
            runner = RunnerProcess.spawn(framework, self.python, runner_env(), self.log_fd,
                                         (job_id, attempt, device, context),
                                         self.settings.resolved_runner_memory())
        self.fill()
        return runner

    def close(self) -> None:
        """Stop every spare (worker shutdown); no spare starts after this."""
        self.closed = True
        for spare in self.spares.values():
            spare.close()
        self.spares.clear()
