"""A warm runner: `python -m workers.spare FRAMEWORK [--fork]`.

Imports the framework and the project (`workers.runner.preload`) and warms the framework
up, then waits on stdin for a job: one line of JSON,
`{"argv": [JOB_ID, ATTEMPT, RESULT_PATH, DEVICE, CONTEXT], "handed_at": T}`, and runs
exactly what `python -m workers.runner JOB_ID ATTEMPT RESULT_PATH DEVICE CONTEXT` runs.
End of input before a job (the worker discarded the spare, or died) ends the process
with nothing done.

Plain, a spare runs one job and exits. With `--fork` it is a template: it never runs a
job itself; for each job line (which also names the runner's `"log"` file), read once it
has imported, it forks a child that runs the job, answers `{"pid": PID}` on its stdout
(or `{"error": WHY}`, and forks nothing), and reports each child's end as
`{"exit": PID, "code": CODE}`
(`os.waitstatus_to_exitcode`: negative, the signal that killed it). Each job still gets a
process of its own, a copy of one that imported and warmed up but never ran a job, so
nothing a job did can reach the next one; the copy costs milliseconds, not the seconds
of CPU an import and warm-up take. Only a process with no thread besides its main one
forks (a copy of a process keeps only the forking thread, and a lock another thread
held stays held in the child), so only frameworks whose import and warm-up start no
thread of their own fork (`workers.warmpool.FORKS`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import selectors
import signal
import sys
import threading
import time
from typing import IO, Any

import setproctitle

from workers.exits import exit_with

_SPAWNED = time.time()
log = logging.getLogger(__name__)


def warm_up(framework: str) -> None:
    """The framework's warm-up (Framework.warm_up): what a job's first step would
    otherwise do lazily; a failure only costs the job that time."""
    from workers.runners import preload

    try:
        preload(framework).warm_up()
    except Exception:  # noqa: BLE001 - only the first step's speed depends on it
        log.exception("warming the %s runner up failed", framework)


def main(argv: list[str]) -> int:
    """Preload argv[0]'s framework, then run one job, or (--fork) fork one runner per job;
    the runner's (or the template's) exit code."""
    from workers.phases import PHASES

    PHASES.mark("spawned", _SPAWNED)
    fork = argv[1:] == ["--fork"]
    try:
        from workers import runner

        runner.preload(argv[0])
        warm_up(argv[0])
        PHASES.mark("imported")
    except Exception:  # noqa: BLE001 - the job's own import will report it properly
        log.exception("preloading %s failed", argv[0])
        if fork:  # a template must not copy a broken import into every job: the
            return 1  # worker sees it exit and starts its jobs' runners cold
        from workers import runner
    else:
        # Observable readiness: `ps` (and the start-latency benchmark) see it.
        setproctitle.setproctitle(f"{sys.executable} -m workers.spare {' '.join(argv)} (ready)")
    if fork:
        return Template().serve()
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    return run_job(json.loads(line))


def run_job(job: dict[str, Any]) -> int:
    """Run the job line's runner argv in this process; its exit code."""
    from workers import runner
    from workers.phases import PHASES

    argv = [str(a) for a in job["argv"]]
    # Named after its job, as a cold runner's command line is: `ps`, and
    # `pgrep -f "workers.runner JOB"`, find a job's runner either way.
    setproctitle.setproctitle(f"{sys.executable} -m workers.runner {' '.join(argv)}")
    # A job that was already waiting when the preload ended found a cold runner.
    PHASES.warm = PHASES.marks.get("imported", float("inf")) < float(job["handed_at"])
    return runner.main(argv)


class Template:
    """The --fork loop: job lines in on stdin, one child per job, its pid and end out on
    the channel (this process's stdout as it started; stray prints go to stderr)."""

    def __init__(self) -> None:
        self.channel: IO[bytes] = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(2, 1)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector = selectors.DefaultSelector()

    def serve(self) -> int:
        """Fork a runner per job line until end of input; 0."""
        # What the import and warm-up made stays in the permanent generation: a child's
        # collections never walk it, so they do not write to (and copy) pages it shares
        # with the template.
        gc.collect()
        gc.freeze()
        # A child's end wakes the select through the wake-up pipe, which the handler
        # itself never touches: Python writes the signal's number there.
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        # A terminal's Ctrl-C reaches the worker's whole process group: the worker stops
        # its runner and then this template itself; were the template to die first, its
        # running child would die with it (PDEATHSIG) before it could stop at a batch.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.selector.register(0, selectors.EVENT_READ, "jobs")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "ends")
        pending = b""
        while True:
            for key, _ in self.selector.select():
                if key.data == "ends":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                    self._reap()
                    continue
                data = os.read(0, 1 << 16)
                if not data:
                    return 0
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip():
                        self._fork(json.loads(line))

    def _say(self, message: dict[str, Any]) -> None:
        self.channel.write(json.dumps(message).encode() + b"\n")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._say({"exit": pid, "code": os.waitstatus_to_exitcode(status)})

    def _fork(self, job: dict[str, Any]) -> None:
        threads = threading.active_count()
        if threads > 1:
            self._say({"error": f"the template runs {threads} threads; a fork keeps one"})
            return
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the job's runner
            exit_with(lambda: self._run_child(parent, job))
        self._say({"pid": pid})

    def _run_child(self, parent: int, job: dict[str, Any]) -> int:
        self._become_runner(parent, str(job["log"]))
        return run_job(job)

    def _become_runner(self, parent: int, log_path: str) -> None:
        """In the child: dies with the template (and so with the worker), keeps none of
        the template's descriptors, writes to its own log."""
        from workers.phases import PHASES
        from workers.warmpool import runner_preexec

        runner_preexec(None)  # PDEATHSIG, as every runner; the template's data cap stays
        if os.getppid() != parent:  # the template died before the prctl
            os._exit(1)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a runner's own
        self.selector.close()
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
        self.channel.close()
        out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(null)
        PHASES.mark("forked")


if __name__ == "__main__":
    exit_with(lambda: main(sys.argv[1:]))
