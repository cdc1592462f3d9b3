"""Runner process entry: `python -m workers.runner JOB_ID ATTEMPT RESULT_PATH [DEVICE
[CONTEXT [SLOTS RANK PROCS RENDEZVOUS]]]`.

DEVICE is the one the worker's device check verified ("cpu", "cuda:N"; default cpu).
CONTEXT (JSON, `workers.warmpool.RunContext`) names the worker and the request id for the
runner's log lines, and the inherited descriptor they go to (the worker's stderr).
The rest place a data-parallel job's process (workers.training.replicas): only the
leader (rank 0) writes to the store and the result file.
Imports exactly one framework, trains, and writes a one-line JSON outcome for the
supervisor. Exit codes: 0 done, 3 user error, 4 superseded, 5 stopped, 6 out of memory,
1 internal.
A warm runner (`workers.spare`) calls `preload` before its job arrives, then `main`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import open_store
from app.core.spec import JobSpec
from app.core.states import JobStatus
from app.db import make_engine, make_sessionmaker
from app.models import Job, JobEvent
from app.observability import logging as log_context
from app.observability.logging import configure_logging
from app.settings import Settings, get_settings
from workers import faults
from workers.errors import Superseded, UserError
from workers.exits import exit_with
from workers.phases import PHASES
from workers.reporting import JobReporter, ReplicaReporter
from workers.runners import FRAMEWORKS
from workers.runners import preload as import_framework
from workers.runners.common import StopFlag, StopRequested
from workers.training.replicas import Replicas
from workers.training.run import run

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_SUPERSEDED, EXIT_STOPPED = 0, 1, 3, 4, 5
EXIT_OUT_OF_MEMORY = 6
log = logging.getLogger("trainery.runner")

__all__ = ["main", "preload"]  # preload: a pre-started runner imports its framework early


def preload(framework: str) -> None:
    """What a warm runner does before its job: thread caps, the framework, the project
    (builtin datasets are read from scikit-learn's files without importing it). It
    touches no device: CUDA initialises only when the job runs, so an idle spare holds
    no GPU memory and no CUDA context."""
    limit_threads(get_settings().runner_threads)
    import_framework(framework)


def _train(spec: JobSpec, reporter: JobReporter, stop: StopFlag, device: str,
           replicas: Replicas, fault_rules: str) -> None:
    """Train with the test-only fault injection installed when the setting names rules."""
    import_framework(spec.framework)
    PHASES.mark("framework_ready")
    rules = faults.parse(fault_rules, spec.name)
    injection = faults.FaultInjection(rules, reporter)
    run(spec, reporter, stop, device, replicas,
        extra_callbacks=[injection] if injection.rules else [], onnx_fault=injection.onnx_fails)


class _StartReporter(JobReporter):
    """A JobReporter whose "training on" event carries the start phases (workers.phases)."""

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        if message.startswith("training on"):
            PHASES.mark("model_ready")
            data = {**(data or {}), "start": PHASES.report()}
        super().event(message, data)


def _as_utc(value: datetime | None) -> float | None:
    if value is None:
        return None
    # SQLite hands back naive datetimes; the store writes UTC.
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


def _note_start_times(factory: sessionmaker[Session], job_id: str) -> None:
    with factory() as session:
        PHASES.claimed_at = _as_utc(session.scalar(select(Job.started_at)
                                                   .where(Job.id == job_id)))
        PHASES.queued_at = _as_utc(session.scalar(
            select(func.max(JobEvent.ts)).where(JobEvent.job_id == job_id,
                                                JobEvent.to_status == JobStatus.QUEUED.value)))


def out_of_memory(exc: BaseException, framework: object) -> bool:
    """Whether exc, or an exception it was raised from, is an allocation that failed.

    The framework's own check is asked only once its module is imported: a framework
    that failed to import (not installed on this worker) raised no allocation error,
    and importing it again here would raise out of the runner's error handling."""
    seen: BaseException | None = exc
    module = FRAMEWORKS.get(str(framework))
    loaded = module is not None and module in sys.modules
    while seen is not None:
        if isinstance(seen, MemoryError):
            return True
        if loaded and import_framework(str(framework)).out_of_memory(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def out_of_memory_message(exc: BaseException, device: str, settings: Settings) -> str:
    """What ran out, and what the user can change."""
    cap = settings.resolved_runner_memory()
    limit = (f"; a runner on this worker may allocate {cap / 2**30:.1f} GiB of host memory "
             "(TRAINERY_RUNNER_MEMORY_BYTES)" if cap else "")
    return (f"the job ran out of memory on {device}: {type(exc).__name__}: {str(exc)[:300]}"
            f"{limit}; lower training.batch_size, the model's size or the dataset's")


def limit_threads(threads: int | None) -> None:
    """Cap the framework's CPU threads; must run before it is imported (both read these
    at start-up: OpenMP and MKL for torch, TF_NUM_*_THREADS for TensorFlow)."""
    if threads is None:
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[name] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(min(2, threads))


def _log_to(context: dict[str, Any]) -> TextIO:
    """Where the runner's log lines go: the worker's stderr when it handed one down."""
    fd = context.get("log_fd")
    return sys.stderr if fd is None else os.fdopen(int(fd), "w", buffering=1)


def main(argv: list[str]) -> int:
    """Run one attempt of a job: argv is JOB_ID ATTEMPT RESULT_PATH [DEVICE [CONTEXT]]; the
    exit code."""
    PHASES.mark("runner_started")
    started = time.monotonic()
    job_id, attempt, result_path = argv[0], int(argv[1]), Path(argv[2])
    device = argv[3] if len(argv) > 3 else "cpu"
    context = json.loads(argv[4]) if len(argv) > 4 else {}
    replicas = Replicas.parse(argv[5:])
    settings = get_settings()
    configure_logging("runner", settings.log_format, stream=_log_to(context))
    log_context.update(job_id=job_id, attempt=attempt, worker=context.get("worker"),
                       request_id=context.get("request_id"))
    stop = StopFlag()
    stop.install()
    limit_threads(settings.runner_threads)
    engine = make_engine(settings.resolved_database_url(), pool_size=1)
    factory = make_sessionmaker(engine)
    reporter_class = _StartReporter if replicas.leader else ReplicaReporter
    reporter = reporter_class(factory, open_store(factory, settings), job_id, attempt,
                              write_behind=True)
    _note_start_times(factory, job_id)

    def outcome(code: int, **result: Any) -> int:
        if replicas.leader:
            result_path.write_text(json.dumps(result))
        log.info("runner finished", extra={"outcome": result["status"], "exit_code": code,
                                           "duration_s": round(time.monotonic() - started, 3)})
        return code

    try:
        spec = JobSpec.model_validate(reporter.spec)
        log.info("runner started", extra={"framework": spec.framework, "device": device,
                                          "warm": PHASES.warm, "pid": os.getpid()})
        try:
            _train(spec, reporter, stop, device, replicas, settings.fault_injection)
        finally:
            # Whatever ended training, its queued writes (the last metrics, a
            # hand-back checkpoint) land before the outcome; a write that was
            # refused (Superseded) becomes the outcome.
            reporter.close()
        return outcome(EXIT_OK, status="ok")
    except UserError as exc:
        return outcome(EXIT_USER, status="error", type="user_error", message=str(exc))
    except Superseded as exc:
        return outcome(EXIT_SUPERSEDED, status="superseded", message=str(exc))
    except StopRequested:
        return outcome(EXIT_STOPPED, status="stopped", message=stop.reason)
    except Exception as exc:  # noqa: BLE001 - the supervisor records the cause
        traceback.print_exc()
        if out_of_memory(exc, reporter.spec.get("framework")):
            return outcome(EXIT_OUT_OF_MEMORY, status="error", type="out_of_memory",
                           message=out_of_memory_message(exc, device, settings))
        return outcome(EXIT_INTERNAL, status="error", type="internal",
                       message=f"{type(exc).__name__}: {exc}")
    finally:
        engine.dispose()


if __name__ == "__main__":
    exit_with(lambda: main(sys.argv[1:]))
