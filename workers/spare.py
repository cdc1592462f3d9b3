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


# The Keras trainer's methods that tf.function converts at a job's first step:
# AutoGraph's source-to-source work (1-3 s), cached per function in the process.
KERAS_CONVERTED = ("_train_step", "_sums", "_eval_step")


def warm_up(framework: str) -> None:
    """Do ahead what a job's first step would otherwise do lazily, touching no GPU and
    leaving no state a job could see.

    PyTorch: a throwaway optimizer step on the CPU (the first optimizer imports
    torch._dynamo, seconds; the job reseeds every generator before it starts). Keras:
    AutoGraph's conversion of the trainer's step functions, pure Python; no TensorFlow
    op runs (that would initialise the devices, before the job's configure_devices,
    and on a GPU take a CUDA context) and no Keras layer is built (that would shift
    the job's layer names).
    """
    if framework == "pytorch":
        import torch

        layer = torch.nn.Linear(2, 1)
        optimizer = torch.optim.Adam(layer.parameters())
        layer(torch.zeros(1, 2)).sum().backward()
        optimizer.step()
        return
    try:
        import tensorflow as tf

        from workers.runners.tfkeras.trainer import KerasTrainer

        for name in KERAS_CONVERTED:
            method = getattr(KerasTrainer, name, None)
            if callable(method):
                tf.autograph.to_graph(method)
    except Exception:  # noqa: BLE001 - only the first step's speed depends on it
        logging.getLogger(__name__).exception("converting the Keras step ahead failed")


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
