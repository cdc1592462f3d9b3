"""One job from data to downloads, the same for every framework (the registry picks its module)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from app.core.modelspec import resolve
from app.core.spec import JobSpec
from workers import dataset_cache, datasets
from workers.callbacks import Callback, standard_callbacks
from workers.reporting import JobReporter
from workers.runners import ModelArgs, preload
from workers.runners.common import StopFlag, model_card, resume_from_latest
from workers.training.loop import TrainingLoop
from workers.training.replicas import ONE, Replicas


def imported_frameworks() -> list[str]:
    """Which of the two frameworks this process has imported (it should be the job's only)."""
    return sorted(m for m in ("torch", "tensorflow") if m in sys.modules)


def run(spec: JobSpec, reporter: JobReporter, stop: StopFlag, device: str,
        replicas: Replicas = ONE, extra_callbacks: Sequence[Callback] = (),
        onnx_fault: bool = False) -> None:
    """Train spec on device (the one the worker verified; replicas: this process's part of
    a data-parallel job) to the end, resuming from the latest checkpoint, and store the
    model (the leader); extra_callbacks and onnx_fault are tests' faults."""
    framework = preload(spec.framework)
    handle = framework.setup(spec, device, replicas)
    data = datasets.load(spec.dataset, fetch=dataset_cache.fetcher(reporter))
    mean, std = datasets.input_stats(data.x_train)
    y_mean = y_std = None
    if spec.task == "regression":
        y_mean, y_std = datasets.target_stats(data.y_train)
    model_args = ModelArgs(resolve(spec.model, data.sample_shape), data.sample_shape,
                           data.num_outputs, mean, std, y_mean, y_std)
    backend = framework.make_backend(spec, data, model_args, handle)
    if backend.precision_note:
        reporter.event(backend.precision_note, {"precision": spec.training.precision})
    callbacks, _ = standard_callbacks(spec, reporter, has_validation=len(data.x_val) > 0,
                                      extra=extra_callbacks)
    loop = TrainingLoop(spec, backend, callbacks, stop)
    resume_from_latest(loop, reporter)
    where, details = backend.describe()
    reporter.event(f"training on {where}: {len(data.x_train)} training and {len(data.x_val)} "
                   "validation samples", details)
    loop.fit()
    if not replicas.leader:
        return

    notes = framework.export(spec, data, backend, model_args, reporter, onnx_fault)
    reporter.set_model_card({**model_card(spec, data, framework.versions(), framework.INPUT_NOTE),
                             **notes})
    frameworks = imported_frameworks()
    reporter.event("frameworks imported by the runner: " + ", ".join(frameworks),
                   {"frameworks": frameworks})
