"""Runner process entry: `python -m workers.runner JOB_ID ATTEMPT RESULT_PATH`.

Imports exactly one framework, trains, and writes a one-line JSON outcome for the
supervisor. Exit codes: 0 done, 3 user error, 4 superseded, 5 stopped, 1 internal.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from app.artifacts import open_store
from app.core.spec import JobSpec
from app.db import make_engine, make_sessionmaker
from app.observability import logging as log_context
from app.observability.logging import configure_logging
from app.settings import get_settings
from workers.errors import Superseded, UserError
from workers.reporting import JobReporter
from workers.runners.common import StopFlag, StopRequested

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_SUPERSEDED, EXIT_STOPPED = 0, 1, 3, 4, 5


def _train(spec: JobSpec, reporter: JobReporter, stop: StopFlag) -> None:
    if spec.framework == "pytorch":
        from workers.runners.pytorch.run import run
    else:
        from workers.runners.tfkeras.run import run  # type: ignore[no-redef]
    run(spec, reporter, stop)


def limit_threads(threads: int | None) -> None:
    """Cap the framework's CPU threads; must run before it is imported (both read these
    at start-up: OpenMP and MKL for torch, TF_NUM_*_THREADS for TensorFlow)."""
    if threads is None:
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[name] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(min(2, threads))


def main(argv: list[str]) -> int:
    job_id, attempt, result_path = argv[0], int(argv[1]), Path(argv[2])
    settings = get_settings()
    configure_logging("runner", settings.log_format)
    log_context.update(job_id=job_id, attempt=attempt)
    stop = StopFlag()
    stop.install()
    limit_threads(settings.runner_threads)
    engine = make_engine(settings.resolved_database_url(), pool_size=1)
    factory = make_sessionmaker(engine)
    reporter = JobReporter(factory, open_store(factory, settings), job_id, attempt,
                           write_behind=True)

    def outcome(code: int, **result: Any) -> int:
        result_path.write_text(json.dumps(result))
        return code

    try:
        spec = JobSpec.model_validate(reporter.spec)
        try:
            _train(spec, reporter, stop)
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
        return outcome(EXIT_INTERNAL, status="error", type="internal",
                       message=f"{type(exc).__name__}: {exc}")
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
