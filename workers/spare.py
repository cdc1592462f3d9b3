"""A warm runner: `python -m workers.spare FRAMEWORK`.

Imports the framework and the project (`workers.runner.preload`), then waits for one
line of JSON on stdin, `{"argv": [JOB_ID, ATTEMPT, RESULT_PATH, DEVICE, CONTEXT]}`, and
runs exactly what `python -m workers.runner JOB_ID ATTEMPT RESULT_PATH DEVICE CONTEXT`
runs. End of input before a job (the worker discarded the spare, or died) ends the process
with nothing done.
One spare runs at most one job: nothing a job did can reach the next one.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import setproctitle

_SPAWNED = time.time()


def warm_up(framework: str) -> None:
    """The framework's warm-up (Framework.warm_up): what a job's first step would
    otherwise do lazily; a failure only costs the job that time."""
    from workers.runners import preload

    try:
        preload(framework).warm_up()
    except Exception:  # noqa: BLE001 - only the first step's speed depends on it
        logging.getLogger(__name__).exception("warming the %s runner up failed", framework)


def main(argv: list[str]) -> int:
    """Preload argv[0]'s framework, wait for the job line, run it; the runner's exit code."""
    from workers.phases import PHASES

    PHASES.mark("spawned", _SPAWNED)
    try:
        from workers import runner

        runner.preload(argv[0])
        warm_up(argv[0])
        PHASES.mark("imported")
    except Exception:  # noqa: BLE001 - the job's own import will report it properly
        logging.getLogger(__name__).exception("preloading %s failed", argv[0])
        from workers import runner
    else:
        # Observable readiness: `ps` (and the start-latency benchmark) see it.
        setproctitle.setproctitle(f"{sys.executable} -m workers.spare {argv[0]} (ready)")
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    job = json.loads(line)
    argv = [str(a) for a in job["argv"]]
    # Named after its job, as a cold runner's command line is: `ps`, and
    # `pgrep -f "workers.runner JOB"`, find a job's runner either way.
    setproctitle.setproctitle(f"{sys.executable} -m workers.runner {' '.join(argv)}")
    # A job that was already waiting when the preload ended found a cold runner.
    PHASES.warm = PHASES.marks.get("imported", float("inf")) < float(job["handed_at"])
    return runner.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
