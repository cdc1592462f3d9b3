"""The supervisor: claims a job, runs the runner subprocess, heartbeats, records the outcome."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.states import JobStatus
from app.db import transaction
from app.models import Job
from app.observability import logging as log_context
from app.services import lifecycle, slots
from app.settings import Settings
from workers import runner as runner_module
from workers.rankgroup import GroupProc, RankFailure, RankGroup
from workers.warmpool import ForkedProc, RunContext, RunnerProcess, WarmPool

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 30


@dataclass
class RunnerOutcome:
    returncode: int
    result: dict[str, Any]
    stderr_tail: str
    stopped_for: str | None  # "cancel" | "shutdown" | None
    rank_failure: RankFailure | None = None  # a multi-slot job's first failed rank


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


class Supervisor:
    """One per worker process; runs one job at a time."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings, worker: str,
                 send_wake: Callable[[str, str], object]) -> None:
        self.factory, self.settings, self.worker = factory, settings, worker
        self.send_wake = send_wake
        self.shutdown = threading.Event()
        self.current: tuple[str, int] | None = None
        self.device = "cpu"  # set from the device check
        self.idle_since = time.monotonic()
        self.pool = WarmPool(settings)

    def wake(self, job_id: str) -> tuple[str, int] | None:
        """Handle one wake-up: run the most urgent job of job_id's queue; (job, attempt) run."""
        if self.shutdown.is_set():
            return None
        with self.factory() as session:
            queue = session.scalar(select(Job.queue).where(Job.id == job_id))
        if queue is None:
            log.warning("wake-up for unknown job %s ignored", job_id)
            return None
        with transaction(self.factory) as session:
            claimed = lifecycle.claim_next(session, queue, self.worker,
                                           self.settings.worker_lost_after_s)
        if claimed is None:
            log.info("wake-up for %s: nothing left to run in queue %s", job_id, queue)
            return None
        self.current = claimed
        if claimed[0] != job_id:  # a more urgent job: the wake-up's request did not ask for it
            log.info("wake-up for %s ran %s, the most urgent job of queue %s", job_id,
                     claimed[0], queue)
            log_context.update(request_id=None)
        log_context.update(job_id=claimed[0], attempt=claimed[1])
        try:
            freed = self.supervise(*claimed)
        finally:
            self.current = None
            self.idle_since = time.monotonic()
        log_context.update(request_id=None)  # the wake-ups a run's end sends are its own
        self._announce(queue, freed)
        return claimed

    def _announce(self, queue: str, freed: int) -> None:
        """Send a wake-up for each slot a job freed while jobs wait in its queue: a wake-up
        that found no job to fit (a gang waiting for slots) was consumed, so the slots
        that free up say so themselves."""
        with self.factory() as session:
            waiting = slots.queued_needs(session, queue, 1)
        for _ in range(freed if waiting else 0):
            self.send_wake(waiting[0][0], queue)

    def supervise(self, job_id: str, attempt: int) -> int:
        """Run attempt of job_id in a runner subprocess until it ends, then record how; the
        number of slots it held."""
        with self.factory() as session:
            spec = session.get_one(Job, job_id).spec
            held = [(w.name, w.slot_device) for w in slots.held(session, job_id, self.worker)]
        max_runtime = float(spec["resources"]["max_runtime_s"])
        if spec["resources"].get("gpus", 0) >= 1 and not self.device.startswith("cuda"):
            with transaction(self.factory) as session:
                lifecycle.add_event(session, job_id, f"the job asks for a GPU; worker "
                                    f"{self.worker} has none (a CPU-only fleet), so it trains on "
                                    "the CPU", attempt=attempt)
        runner: RunnerProcess | RankGroup
        request_id = log_context.current("request_id")
        if len(held) > 1:
            with transaction(self.factory) as session:
                lifecycle.add_event(session, job_id, f"data-parallel on {len(held)} slots: "
                                    + ", ".join(name for name, _ in held), attempt=attempt,
                                    data={"slots": [name for name, _ in held]})
            runner = RankGroup.spawn(spec["framework"], self.pool.python,
                                     (job_id, attempt, self.device),
                                     [device for _, device in held], self.settings.runner_threads,
                                     RunContext(self.worker, request_id),
                                     self.settings.resolved_runner_memory())
        else:
            runner = self.pool.start(spec["framework"], job_id, attempt, self.device, self.worker,
                                     request_id)
        try:
            log.info("job %s attempt %d: runner pid %s", job_id, attempt,
                     runner.proc.pid or "to come (its template is importing)")
            ended, stopped_for = self._watch(runner.proc, job_id, attempt,
                                             time.monotonic() + max_runtime)
            if not ended:
                return len(held)
            try:
                result = json.loads(runner.result_path.read_text())
            except (OSError, ValueError):
                result = {}
            failure = runner.proc.failure if isinstance(runner.proc, GroupProc) else None
            self._record(job_id, attempt, RunnerOutcome(
                runner.proc.returncode or 0, result, _tail(runner.log_path), stopped_for,
                failure))
        finally:
            runner.close()
        return len(held)

    def _watch(self, proc: subprocess.Popen[bytes] | ForkedProc | GroupProc, job_id: str,
               attempt: int, deadline: float) -> tuple[bool, str | None]:
        """Heartbeat until the runner exits; (False, _) if the job was taken from us or timed
        out."""
        stopped_for: str | None = None
        stop_deadline = float("inf")
        while True:
            try:
                proc.wait(timeout=self.settings.heartbeat_interval_s)
                return True, stopped_for
            except subprocess.TimeoutExpired:
                pass
            with transaction(self.factory) as session:
                status = lifecycle.heartbeat(session, job_id, attempt)
            if status is None:
                log.warning("job %s attempt %d was superseded; stopping its runner",
                            job_id, attempt)
                self._kill(proc)
                return False, None
            if time.monotonic() > deadline:
                self._kill(proc)
                with transaction(self.factory) as session:
                    lifecycle.fail(session, job_id, attempt, "timeout",
                                   "the job ran longer than resources.max_runtime_s "
                                   f"({self._max_runtime(job_id):.0f}s)")
                return False, None
            if stopped_for != "cancel" and status == JobStatus.CANCELLING.value:
                # A cancel that comes while the runner stops for a shutdown wins: the
                # job ends cancelled, not handed back (which cancelling cannot be).
                was, stopped_for = stopped_for, "cancel"
                if was is None:
                    self._ask_stop(proc, job_id, stopped_for)
                    stop_deadline = time.monotonic() + self.settings.stop_grace_s
            elif stopped_for is None and self.shutdown.is_set():
                stopped_for = "shutdown"
                self._ask_stop(proc, job_id, stopped_for)
                stop_deadline = time.monotonic() + self.settings.stop_grace_s
            elif time.monotonic() > stop_deadline:
                log.warning("job %s: runner ignored SIGTERM for %.0fs; killing it", job_id,
                            self.settings.stop_grace_s)
                proc.kill()

    @staticmethod
    def _ask_stop(proc: subprocess.Popen[bytes] | ForkedProc | GroupProc, job_id: str,
                  why: str) -> None:
        log.info("job %s: asking the runner to stop (%s)", job_id, why)
        proc.send_signal(signal.SIGTERM)

    def _max_runtime(self, job_id: str) -> float:
        with self.factory() as session:
            return float(session.get_one(Job, job_id).spec["resources"]["max_runtime_s"])

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes] | ForkedProc | GroupProc) -> None:
        proc.kill()
        proc.wait()

    def _record(self, job_id: str, attempt: int, outcome: RunnerOutcome) -> None:
        rc, result = outcome.returncode, outcome.result
        data = {"returncode": rc, "stderr_tail": outcome.stderr_tail}
        handed_back = requeued = False
        status = result.get("status")
        with transaction(self.factory) as session:
            # The result file is written last, after the model is stored: when it
            # says ok, the job is done even if a signal then ended the process.
            if status == "ok":
                lifecycle.succeed(session, job_id, attempt)
            elif status == "superseded" or rc == runner_module.EXIT_SUPERSEDED:
                log.info("job %s attempt %d ended superseded", job_id, attempt)
            elif outcome.stopped_for == "cancel":
                how = ("stopped at a batch boundary" if status == "stopped"
                       else f"runner killed after {self.settings.stop_grace_s:.0f}s")
                lifecycle.finish_cancel(session, job_id, attempt, how)
            elif outcome.stopped_for == "shutdown" or status == "stopped":
                handed_back = lifecycle.hand_back(
                    session, job_id, attempt, f"worker {self.worker} is shutting down; the job "
                    "resumes from its last checkpoint on another worker")
                if not handed_back:
                    # Cancelled after the last heartbeat: cancelling cannot be handed back.
                    lifecycle.finish_cancel(session, job_id, attempt,
                                            "stopped while its worker shut down")
            elif (outcome.rank_failure is not None and result.get("type") != "user_error"
                  and (outcome.rank_failure.rank > 0 or outcome.rank_failure.returncode < 0)):
                # A rank that died (killed, OOM, a lost device) costs the attempt, like a
                # lost worker: the job resumes from its last checkpoint. (Every rank meets
                # a user error, and rank 0 says so: that fails the job as on one slot.)
                requeued = lifecycle.lose(
                    session, job_id, attempt, self.settings.max_attempts,
                    f"{outcome.rank_failure.describe()}; the group was stopped", data) == "queued"
            elif rc < 0:
                lifecycle.fail(session, job_id, attempt, "runner_crashed",
                               f"the runner died by {_signal_name(rc)}", data)
            elif status == "error":
                lifecycle.fail(session, job_id, attempt, str(result["type"]),
                               str(result["message"]), data)
            else:
                lifecycle.fail(session, job_id, attempt, "runner_crashed",
                               f"the runner exited with code {rc} without a result", data)
            queue = session.get_one(Job, job_id).queue
        if handed_back or requeued:
            self.send_wake(job_id, queue)
