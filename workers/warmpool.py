"""Runner processes, started before their job: one spare per framework, already imported.

A runner still runs one job attempt and dies with its worker; what changes is when it
starts. The worker keeps a spare (`python -m workers.spare FRAMEWORK`) that has imported
the framework and the project and waits on its stdin; a job is handed to it as one JSON
line, and a new spare starts at once for the next job. `TRAINERY_WARM_RUNNERS` says
which spares a worker keeps: `last` (default) one for the framework it ran last
(PyTorch before the first job), `both` one per framework (more memory: an idle
PyTorch spare holds ~0.25 GB, a TensorFlow one ~0.5 GB), `pytorch` or `keras` that
framework's alone, `off` none. Without a usable
spare a job's runner starts cold, `python -m workers.runner JOB ATTEMPT RESULT`, as
before. A spare is started with exactly the environment a job's runner gets; if the
worker's environment (or runner Python) changed since, or the spare died, it is
discarded and the job's runner starts cold.

The PyTorch spare is a template (`FORKS`, `TRAINERY_FORK_RUNNERS`, Linux): it stays, and
each job's runner is a fork of it (`python -m workers.spare pytorch --fork`), a process
of its own that starts in milliseconds instead of importing and warming up again (about
6 s of CPU). A job that comes while the template still imports is forked once it has
(the supervisor heartbeats meanwhile, as for a runner that imports). The template is the
fork's parent, so it reaps the runner and reports its exit code; `ForkedProc` gives the
supervisor the Popen calls it makes. TensorFlow starts threads of its own at import and
in its warm-up, and a fork keeps only the forking thread, so the Keras spare runs one job
and is replaced, as before.

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
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from app.settings import Settings

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ("pytorch", "keras")
# The frameworks whose spare forks each job's runner (workers/spare.py: Template):
# their import and warm-up leave the process with its main thread alone.
FORKS = ("pytorch",)
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


class ForkChannel:
    """A template's stdout, read by the worker: the pids it forked, and how each ended.

    The template answers job lines in order, once it has imported: each answer goes to
    the oldest fork still waiting for one."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.exits: dict[int, int] = {}
        self.waiting: list[ForkedProc] = []
        self.children: set[int] = set()
        self.refusals = 0  # forks it could not make: a template to replace
        self.closed = False
        self._pending = b""

    def read(self, timeout: float | None) -> None:
        """Take in what the template said within timeout (None: until it says something)."""
        if self.closed:
            return
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return
        data = os.read(fd, 1 << 16)
        if not data:  # the template is gone, and its children with it (PDEATHSIG)
            self.closed = True
            for pid in self.children - self.exits.keys():
                self.exits[pid] = -signal.SIGKILL
            for fork in self.waiting:
                fork.refused("the template runner exited before it forked this runner")
            self.refusals += len(self.waiting)
            self.waiting.clear()
            return
        self._pending += data
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            message = json.loads(line)
            if "exit" in message:
                self.exits[int(message["exit"])] = int(message["code"])
            elif "pid" in message:
                self.children.add(int(message["pid"]))
                self.waiting.pop(0).forked(int(message["pid"]))
            else:
                self.refusals += 1
                self.waiting.pop(0).refused(f"the template runner forked nothing: "
                                            f"{message.get('error')}")

    def running(self) -> bool:
        """Whether a runner of this template waits to be forked or has not ended."""
        if not self.closed:
            self.read(0)
        return bool(self.waiting) or bool(self.children - self.exits.keys())


class ForkedProc:
    """A runner a template forks, behind the Popen calls the supervisor makes (wait, poll,
    kill, signal); its pid comes once the template has forked it (after its import, when
    the job came first), its exit code from the template, its parent. If the template
    cannot fork it (it died, or runs a thread a fork would not copy), the job's runner
    starts cold instead (`cold`), and this stands for that process."""

    def __init__(self, channel: ForkChannel, log_file: IO[bytes],
                 cold: Callable[[], subprocess.Popen[bytes]]) -> None:
        self.channel, self.log_file, self._cold_start = channel, log_file, cold
        self.pid: int | None = None
        self._cold: subprocess.Popen[bytes] | None = None
        self._killed = False  # killed before it was forked: it never runs
        self._deferred: int | None = None  # a signal sent before the pid was known

    def forked(self, pid: int) -> None:
        self.pid = pid
        if self._deferred is not None:
            self.send_signal(self._deferred)

    def refused(self, why: str) -> None:
        if self._killed:
            return
        log.warning("%s; starting the job's runner cold", why)
        self.log_file.write(f"{why}; started cold\n".encode())  # the runner's log goes on
        self.log_file.flush()
        self._cold = self._cold_start()
        self.pid = self._cold.pid
        if self._deferred is not None:
            self._cold.send_signal(self._deferred)

    @property
    def returncode(self) -> int | None:
        if self._cold is not None:
            return self._cold.poll()
        if self._killed:
            return -signal.SIGKILL
        return None if self.pid is None else self.channel.exits.get(self.pid)

    def poll(self) -> int | None:
        if self.returncode is None and self._cold is None:
            self.channel.read(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.returncode) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"runner {self.pid}", timeout or 0.0)
            if self._cold is not None:
                return self._cold.wait(left)
            self.channel.read(left)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        if self._cold is not None:
            self._cold.send_signal(sig)
        elif self.pid is None:
            if sig == signal.SIGKILL:  # not forked yet: the template goes, and the fork
                self._killed = True  # with it (the pool starts another)
                self.channel.proc.kill()
            else:
                self._deferred = sig
        else:
            # Its pid is not reused before the template has reaped it, and the template
            # says so before anything else: an ended runner is never signalled.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start_process(python: str, argv: list[str], env: dict[str, str], log_fd: int | None,
                  memory_bytes: int | None, stdout: int | IO[bytes], stderr: IO[bytes],
                  stdin: int | None = None) -> subprocess.Popen[bytes]:
    """A runner-side process (spare, template or runner) of this worker: inherits log_fd,
    dies with the worker, has its data segment capped at memory_bytes (None: no cap)."""
    return subprocess.Popen([python, *argv], cwd=PROJECT_ROOT, env=env, stdin=stdin,
                            stdout=stdout, stderr=stderr,
                            pass_fds=() if log_fd is None else (log_fd,),
                            preexec_fn=functools.partial(runner_preexec, memory_bytes))


def runner_argv(job_id: str, attempt: int, result: Path, device: str,
                context: RunContext) -> list[str]:
    """A cold runner's arguments: `-m workers.runner JOB ATTEMPT RESULT DEVICE CONTEXT`."""
    return ["-m", "workers.runner", job_id, str(attempt), str(result), device,
            context.to_arg()]


@dataclass
class RunnerProcess:
    """One runner process with its private directory: its log and its result file."""

    framework: str
    python: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | ForkedProc
    tmp: tempfile.TemporaryDirectory[str]
    log_file: IO[bytes]
    job: str | None = field(default=None)
    channel: ForkChannel | None = field(default=None)  # a template's: its children
    log_fd: int | None = field(default=None)
    memory_bytes: int | None = field(default=None)

    @classmethod
    def spawn(cls, framework: str, python: str, env: dict[str, str], log_fd: int | None,
              job: tuple[str, int, str, RunContext] | None = None,
              memory_bytes: int | None = None, fork: bool = False) -> RunnerProcess:
        """Start a spare for framework (it preloads, then waits for `hand`; with fork, a
        template that forks a runner per `fork`), or, given a job, a cold `python -m
        workers.runner JOB ATTEMPT RESULT DEVICE CONTEXT` for it. Each inherits log_fd,
        where its log lines go, and has its data segment capped at memory_bytes (None:
        no cap)."""
        tmp = tempfile.TemporaryDirectory(prefix="trainery-")
        log_file = (Path(tmp.name) / "runner.log").open("wb")
        stdout: int | IO[bytes] = log_file
        if job is None:
            argv, stdin = ["-m", "workers.spare", framework], subprocess.PIPE
            if fork:
                argv.append("--fork")
                stdout = subprocess.PIPE  # the channel; its stderr still goes to the log
        else:
            argv = runner_argv(*job[:2], Path(tmp.name) / "result.json", *job[2:])
            stdin = None
        proc = start_process(python, argv, env, log_fd, memory_bytes, stdout, log_file, stdin)
        return cls(framework, python, env, proc, tmp, log_file, job[0] if job else None,
                   ForkChannel(proc) if fork else None, log_fd, memory_bytes)

    def fork(self, job_id: str, attempt: int, device: str,
             context: RunContext) -> RunnerProcess:
        """A runner for the job, forked by this template as soon as it has imported (at
        once if it has); OSError if the template is gone."""
        stdin = self.popen.stdin
        assert self.channel is not None and stdin is not None
        tmp = tempfile.TemporaryDirectory(prefix="trainery-")
        log_path = Path(tmp.name) / "runner.log"
        log_file = log_path.open("wb")
        argv = runner_argv(job_id, attempt, Path(tmp.name) / "result.json", device, context)
        line = {"argv": argv[2:], "handed_at": time.time(), "log": str(log_path)}
        try:
            stdin.write(json.dumps(line).encode() + b"\n")
            stdin.flush()
        except OSError:
            log_file.close()
            tmp.cleanup()
            raise
        cold = functools.partial(start_process, self.python, argv, self.env, self.log_fd,
                                 self.memory_bytes, log_file, log_file)
        proc = ForkedProc(self.channel, log_file, cold)
        self.channel.waiting.append(proc)
        return RunnerProcess(self.framework, self.python, self.env, proc, tmp, log_file, job_id)

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        """The process this worker started itself (a spare, a template, a cold runner)."""
        assert isinstance(self.proc, subprocess.Popen), "a forked runner has no pipes"
        return self.proc

    @property
    def result_path(self) -> Path:
        return Path(self.tmp.name) / "result.json"

    @property
    def log_path(self) -> Path:
        return Path(self.tmp.name) / "runner.log"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def busy(self) -> bool:
        """Whether this is a template with a runner of its own to fork or still running."""
        return self.channel is not None and self.channel.running()

    def hand(self, job_id: str, attempt: int, device: str, context: RunContext) -> None:
        """Give this runner its job (on the device the worker verified); OSError if it is gone."""
        stdin = self.popen.stdin
        assert stdin is not None and self.job is None
        line = {"argv": [job_id, str(attempt), str(self.result_path), device, context.to_arg()],
                "handed_at": time.time()}
        stdin.write(json.dumps(line).encode() + b"\n")
        stdin.close()
        self.job = job_id

    def close(self) -> None:
        """Stop the process if it still runs, and remove its files (a template's forks
        die with it)."""
        popen = self.proc if isinstance(self.proc, subprocess.Popen) else None
        if popen is not None and popen.stdin is not None and not popen.stdin.closed:
            with contextlib.suppress(OSError):
                popen.stdin.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if popen is not None and popen.stdout is not None:
            popen.stdout.close()
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

    def forks(self, framework: str) -> bool:
        """Whether framework's spare is a template that forks each job's runner."""
        return (framework in FORKS and self.settings.fork_runners
                and sys.platform.startswith("linux"))

    def wanted(self) -> list[str]:
        """The frameworks this worker keeps a spare for now."""
        if self.closed or self.policy == "off":
            return []
        if self.policy in FRAMEWORKS:
            return [self.policy]
        return list(FRAMEWORKS) if self.policy == "both" else [self.last]

    def _usable(self, spare: RunnerProcess) -> bool:
        if not spare.alive():
            log.warning("the %s spare runner exited (%s) before its job; see its log:\n%s",
                        spare.framework, spare.proc.returncode,
                        spare.log_path.read_text(errors="replace")[-2000:])
            return False
        if spare.channel is not None and spare.channel.refusals:
            log.warning("the %s template runner could not fork a runner; starting a fresh "
                        "one", spare.framework)
            return False
        if spare.env != runner_env() or spare.python != self.python:
            log.info("the %s spare runner's environment is stale; starting a fresh one",
                     spare.framework)
            return False
        return True

    def fill(self) -> None:
        """Start the spares the policy wants and drop the others (or the stale); a
        template whose runner still runs stays until that runner has ended."""
        wanted = self.wanted()
        for framework, spare in list(self.spares.items()):
            if spare.busy():
                continue
            if framework not in wanted or not self._usable(spare):
                del self.spares[framework]
                spare.close()
        for framework in wanted:
            if framework not in self.spares:
                fork = self.forks(framework)
                self.spares[framework] = RunnerProcess.spawn(
                    framework, self.python, runner_env(), self.log_fd,
                    memory_bytes=self.settings.resolved_runner_memory(), fork=fork)
                log.info("started a %s %s (pid %d)", framework,
                         "template runner (it forks each job's runner)" if fork
                         else "spare runner", self.spares[framework].proc.pid)

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
        if runner is not None and runner.channel is not None:  # a template: it stays
            template, runner = runner, None
            try:
                runner = template.fork(job_id, attempt, device, context)
                self.spares[framework] = template
            except OSError as exc:  # it died since _usable looked
                log.warning("the %s template runner is gone (%s); starting the job's "
                            "runner cold", framework, exc)
                template.close()
        elif runner is not None:
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
