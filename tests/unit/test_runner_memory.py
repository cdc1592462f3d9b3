"""The runner's memory cap, and allocation failures reported as out_of_memory."""

from __future__ import annotations

import functools
import subprocess
import sys

from app.settings import RUNNER_OVERHEAD_BYTES, Settings
from workers import runner
from workers.warmpool import runner_preexec


def test_the_runner_cap_follows_the_budget_unless_set() -> None:
    assert Settings().resolved_runner_memory() == (8 << 30) + RUNNER_OVERHEAD_BYTES
    assert Settings(runner_memory_bytes=0).resolved_runner_memory() is None
    assert Settings(runner_memory_bytes=1 << 30).resolved_runner_memory() == 1 << 30


def test_a_capped_process_gets_memory_errors_not_the_machines_memory() -> None:
    code = ("import numpy as np\ntry:\n    np.ones(1 << 30)\nexcept MemoryError:\n"
            "    print('refused')\nsmall = np.ones(1 << 20)\nprint('small ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, preexec_fn=functools.partial(runner_preexec, 512 << 20))
    assert out.stdout.split() == ["refused", "small", "ok"], out.stderr


def test_allocation_failures_are_out_of_memory() -> None:
    import torch

    from workers.runners import preload

    preload("pytorch")  # as in a runner: its framework is imported before training fails

    try:
        torch.empty(1 << 62, dtype=torch.uint8)
    except RuntimeError as exc:
        torch_error = exc
    assert runner.out_of_memory(torch_error, "pytorch")
    try:
        try:
            raise MemoryError
        except MemoryError as exc:
            raise ValueError("while loading") from exc
    except ValueError as exc:
        wrapped = exc
    assert runner.out_of_memory(wrapped, "pytorch")
    assert not runner.out_of_memory(RuntimeError("injected fault"), "pytorch")
    message = runner.out_of_memory_message(torch_error, "cpu", Settings())
    assert "ran out of memory on cpu" in message and "TRAINERY_RUNNER_MEMORY_BYTES" in message


def test_a_framework_that_is_not_installed_is_no_allocation_failure() -> None:
    # A worker without TensorFlow (`scripts/setup.sh run` installs PyTorch's runner only)
    # given a Keras job: the runner's error handling must not import it again, or the
    # runner dies without a result ("runner_crashed") instead of saying what is missing.
    code = ("import sys\nsys.modules['tensorflow'] = None\nsys.modules['keras'] = None\n"
            "from workers import runner\n"
            "try:\n    runner.import_framework('keras')\n"
            "except ImportError as exc:\n    print(runner.out_of_memory(exc, 'keras'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["False"], out.stderr
