"""The supervisor: claims a job, runs the runner subprocess, heartbeats, records the outcome."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import Job
from app.services import lifecycle
from app.settings import Settings
from workers import runner as runner_module

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STDERR_TAIL_LINES = 30
KILL_GRACE_S = 10.0


@dataclass
class RunnerOutcome:
    returncode: int
    result: dict[str, Any]
    stderr_tail: str


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

    def __init__(self, factory: sessionmaker[Session], settings: Settings, worker: str) -> None:
        self.factory, self.settings, self.worker = factory, settings, worker

    def wake(self, job_id: str) -> str | None:
        """Handle one wake-up: run the most urgent job of job_id's queue; the job run, if any."""
        with self.factory() as session:
            queue = session.scalar(select(Job.queue).where(Job.id == job_id))
        if queue is None:
            log.warning("wake-up for unknown job %s ignored", job_id)
            return None
        with transaction(self.factory) as session:
            claimed = lifecycle.claim_next(session, queue, self.worker)
        if claimed is None:
            log.info("wake-up for %s: nothing left to run in queue %s", job_id, queue)
            return None
        self.supervise(*claimed)
        return claimed[0]

    def supervise(self, job_id: str, attempt: int) -> None:
        """Run attempt of job_id in a runner subprocess until it ends, then record how."""
        with self.factory() as session:
            max_runtime = float(session.get_one(Job, job_id).spec["resources"]["max_runtime_s"])
        with tempfile.TemporaryDirectory(prefix="trainery-") as tmp:
            result_path, log_path = Path(tmp) / "result.json", Path(tmp) / "runner.log"
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(
                    [self.settings.runner_python or sys.executable, "-m", runner_module.__name__,
                     job_id, str(attempt), str(result_path)],
                    cwd=PROJECT_ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
                log.info("job %s attempt %d: runner pid %d", job_id, attempt, proc.pid)
                ended = self._watch(proc, job_id, attempt, time.monotonic() + max_runtime)
            if not ended:
                return
            try:
                result = json.loads(result_path.read_text())
            except (OSError, ValueError):
                result = {}
            self._record(job_id, attempt, RunnerOutcome(proc.returncode, result, _tail(log_path)))

    def _watch(self, proc: subprocess.Popen[bytes], job_id: str, attempt: int,
               deadline: float) -> bool:
        """Heartbeat until the runner exits; False if the job was taken from us or timed out."""
        while True:
            try:
                proc.wait(timeout=self.settings.heartbeat_interval_s)
                return True
            except subprocess.TimeoutExpired:
                pass
            with transaction(self.factory) as session:
                status = lifecycle.heartbeat(session, job_id, attempt)
            if status is None:
                log.warning("job %s attempt %d was superseded; stopping its runner", job_id, attempt)
                self._kill(proc)
                return False
            if time.monotonic() > deadline:
                self._kill(proc)
                with transaction(self.factory) as session:
                    lifecycle.fail(session, job_id, attempt, "timeout",
                                   "the job ran longer than resources.max_runtime_s")
                return False

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _record(self, job_id: str, attempt: int, outcome: RunnerOutcome) -> None:
        rc, result = outcome.returncode, outcome.result
        data = {"returncode": rc, "stderr_tail": outcome.stderr_tail}
        with transaction(self.factory) as session:
            if rc == runner_module.EXIT_OK and result.get("status") == "ok":
                lifecycle.succeed(session, job_id, attempt)
            elif rc == runner_module.EXIT_SUPERSEDED:
                log.info("job %s attempt %d ended superseded", job_id, attempt)
            elif rc == runner_module.EXIT_STOPPED:
                lifecycle.fail(session, job_id, attempt, "internal",
                               f"the runner was stopped ({result.get('message', '')})", data)
            elif rc < 0:
                lifecycle.fail(session, job_id, attempt, "runner_crashed",
                               f"the runner died by {_signal_name(rc)}", data)
            elif result.get("status") == "error":
                lifecycle.fail(session, job_id, attempt, str(result["type"]),
                               str(result["message"]), data)
            else:
                lifecycle.fail(session, job_id, attempt, "runner_crashed",
                               f"the runner exited with code {rc} without a result", data)
