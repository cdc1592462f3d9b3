"""A multi-slot job's runner processes, started and watched as one group.

PyTorch trains one process per slot (DDP), Keras one process over all the slots'
devices (MirroredStrategy). Each process gets the worker's own runner environment,
pinned to its slots' GPUs (CUDA_VISIBLE_DEVICES from each slot's `slot_device`), with
the job's share of CPU threads, and dies with the worker (PDEATHSIG). Multi-slot jobs
bypass the warm spares: a spare is pinned to its worker's one GPU.

The group ends together: once one rank has ended abnormally, the others get
`GROUP_GRACE_S` to finish what they were doing (the leader its result), then SIGKILL.
`GroupProc` offers the part of Popen's surface the supervisor uses.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from workers.training.replicas import Replicas
from workers.warmpool import PROJECT_ROOT, RunContext, runner_env, runner_preexec

GROUP_GRACE_S = 3.0
POLL_S = 0.05


@dataclass(frozen=True)
class RankFailure:
    """The first rank that ended abnormally, and how."""

    rank: int
    returncode: int

    def describe(self) -> str:
        if self.returncode < 0:
            try:
                how = f"died by {signal.Signals(-self.returncode).name}"
            except ValueError:
                how = f"died by signal {-self.returncode}"
        else:
            how = f"exited with code {self.returncode}"
        return f"rank {self.rank} {how}"


class GroupProc:
    """N rank processes behind the Popen calls the supervisor makes (wait, kill, signal)."""

    def __init__(self, procs: list[subprocess.Popen[bytes]]) -> None:
        self.procs = procs
        self.failure: RankFailure | None = None
        self._kill_at = float("inf")

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    @property
    def returncode(self) -> int | None:
        """The leader's exit status, once every rank has ended."""
        if any(p.returncode is None for p in self.procs):
            return None
        return self.procs[0].returncode

    def poll(self) -> int | None:
        for rank, proc in enumerate(self.procs):
            code = proc.poll()
            if code not in (None, 0) and self.failure is None:
                self.failure = RankFailure(rank, code)
                self._kill_at = time.monotonic() + GROUP_GRACE_S
        if time.monotonic() >= self._kill_at:
            self.kill(wait=False)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("rank group", timeout or 0)
            time.sleep(POLL_S)
        return code

    def send_signal(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(sig)

    def kill(self, wait: bool = True) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        if wait:
            for proc in self.procs:
                proc.wait()


@dataclass
class RankGroup:
    """The runner processes of one multi-slot attempt, with their logs and the leader's result."""

    proc: GroupProc
    tmp: tempfile.TemporaryDirectory[str]
    logs: list[IO[bytes]]

    @classmethod
    def spawn(cls, framework: str, python: str, job: tuple[str, int, str],
              slot_devices: list[str], threads: int | None,
              context: RunContext | None = None, memory_bytes: int | None = None) -> RankGroup:
        """Start job (id, attempt, device) on the slots whose GPUs are slot_devices ("" for CPU
        slots): one process per slot for PyTorch, one for them all for Keras. Each rank's log
        lines name context's worker and request id and go to the rank's own log; each rank's
        data segment is capped at memory_bytes (None: no cap), as a one-slot runner's is."""
        tmp = tempfile.TemporaryDirectory(prefix="trainery-")
        slots = len(slot_devices)
        procs = slots if framework == "pytorch" else 1
        rendezvous = Path(tmp.name) / "rendezvous"
        result = Path(tmp.name) / "result.json"
        logs: list[IO[bytes]] = []
        started: list[subprocess.Popen[bytes]] = []
        for rank in range(procs):
            pinned = slot_devices[rank:rank + 1] if procs > 1 else slot_devices
            env = runner_env()
            if any(pinned):
                env["CUDA_VISIBLE_DEVICES"] = ",".join(pinned)
            if threads is not None:  # each slot's share of the cores, for each process
                env["TRAINERY_RUNNER_THREADS"] = str(threads * slots // procs)
            replicas = Replicas(slots, rank, procs, rendezvous if procs > 1 else None)
            log = (Path(tmp.name) / f"rank{rank}.log").open("wb")
            logs.append(log)
            started.append(subprocess.Popen(
                [python, "-m", "workers.runner", job[0], str(job[1]), str(result), job[2],
                 (context or RunContext()).to_arg(), *replicas.argv()],
                cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=functools.partial(runner_preexec, memory_bytes)))
        return cls(GroupProc(started), tmp, logs)

    @property
    def result_path(self) -> Path:
        return Path(self.tmp.name) / "result.json"

    @property
    def log_path(self) -> Path:
        """The log to quote: the first failed rank's, else the leader's."""
        rank = self.proc.failure.rank if self.proc.failure else 0
        return Path(self.tmp.name) / f"rank{rank}.log"

    def close(self) -> None:
        self.proc.kill()
        for log in self.logs:
            log.close()
        self.tmp.cleanup()
