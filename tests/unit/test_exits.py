"""A runner process ends with its job's exit code, its logs and streams flushed, and
without the interpreter's teardown (workers/exits.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import atexit, logging, sys
    from workers.exits import exit_with
    logging.basicConfig(stream=sys.stderr, format="%(message)s")
    atexit.register(lambda: print("teardown ran", flush=True))

    def run():
        sys.stdout.write("unflushed output")  # no newline, no flush: the exit flushes it
        logging.getLogger("runner").warning("runner finished")
        {body}

    exit_with(run)
""")


@pytest.mark.parametrize(("body", "code", "in_stderr"), [
    ("return 3", 3, "runner finished"),
    ("raise SystemExit(4)", 4, "runner finished"),
    ("raise RuntimeError('boom')", 1, "RuntimeError: boom"),
])
def test_a_runner_exits_with_its_code_its_output_flushed_and_no_teardown(
        body: str, code: int, in_stderr: str) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(body=body)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert done.stdout == "unflushed output"  # flushed, and no atexit handler ran
    assert in_stderr in done.stderr
