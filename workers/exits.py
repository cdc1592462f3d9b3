"""How a runner process ends: with its job's exit code, without the interpreter's teardown.

The supervisor records a job's end when the job's runner has exited, so the runner's
last second is its user's: TensorFlow's teardown (its threads, its modules' finalizers)
took 1-2 s after every Keras job (docs/benchmarks.md, "Start latency"). Nothing in that
teardown is the job's: by then the runner has written its outcome and closed its
reporter and its engine, and the kernel frees the rest. What the teardown would flush is
flushed here: logging's handlers, stdout and stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn


def exit_with(run: Callable[[], int]) -> NoReturn:
    """End this process with run()'s exit code (1 if it raised, after the traceback;
    SystemExit's own code), once logs and standard streams are flushed."""
    code = 1
    try:
        code = run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - whatever it was, the runner ends here
        traceback.print_exc()
    finally:
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
