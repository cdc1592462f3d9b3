"""A job's curves as TensorBoard event files: `tensorboard --logdir LOGDIR` shows them.

The writer is tensorboardX (the `trainery-client[tensorboard]` extra): it writes the
event-file format and the hparams plugin's protos with protobuf and numpy only, so an
export needs neither TensorFlow nor PyTorch, and nor does TensorBoard to read it back.
It is imported here only, when an export runs: the SDK and the CLI load without it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainery_client.models import Job, MetricRow, StepSeries

# The scalar tags: the API's series name, then the metric's name as the API spells it.
EPOCHS_PREFIX, STEPS_PREFIX, FINAL_PREFIX = "epochs/", "steps/", "final/"
HParam = bool | str | float | int


@dataclass(frozen=True)
class Export:
    """What an export wrote for one job."""

    job_id: str
    run_dir: Path
    epoch_points: int
    step_points: int
    bucket_steps: int


def flatten(value: Any, prefix: str = "") -> dict[str, HParam]:
    """A spec as hparams, by field path as the compare page names them ({"model": {"layers":
    [{"units": 8}]}} -> {"model.layers[0].units": 8}); null and empty containers as JSON text
    (the plugin takes numbers, strings and booleans only)."""
    if isinstance(value, dict) and value:
        out: dict[str, HParam] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{i}]"))
        return out
    if isinstance(value, (bool, str, int, float)):
        return {prefix: value}
    return {prefix: json.dumps(value)}


def run_dir_name(job: Job) -> str:
    """The run's folder (what TensorBoard lists it as): the job's id, made path-safe."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", job.id)


def write_run(logdir: Path, job: Job, epochs: list[MetricRow], steps: StepSeries) -> Export:
    """Write one job's epoch and step scalars and its hparams into LOGDIR/<job id>/, replacing
    an earlier export of it (its event files) so a re-run does not draw every point twice."""
    try:
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("TensorBoard export needs tensorboardX: "
                           "pip install 'trainery-client[tensorboard]'") from exc
    run_dir = logdir / run_dir_name(job)
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in run_dir.glob("events.out.tfevents.*"):
        old.unlink()
    final = {k: float(v) for k, v in (job.metrics or {}).items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
    last_epoch = epochs[-1].epoch if epochs else 0
    with SummaryWriter(logdir=str(run_dir), flush_secs=3600) as writer:
        for row in epochs:
            for name, value in row.values().items():
                if isinstance(value, (int, float)):
                    writer.add_scalar(EPOCHS_PREFIX + name, float(value), row.epoch)
        for name, bucket in steps.metrics.items():
            for step, value in zip(steps.steps, bucket.last, strict=True):
                if value is not None:
                    writer.add_scalar(STEPS_PREFIX + name, value, step)
        # The hparams session goes in the run's own folder (tensorboardX's add_hparams
        # would open a timestamped sub-run), its metrics as scalars beside it.
        spec = flatten(job.spec)
        metric_tags = {FINAL_PREFIX + k: v for k, v in final.items()}
        for summary in hparams(spec, metric_tags):
            writer.file_writer.add_summary(summary)
        for tag, value in metric_tags.items():
            writer.add_scalar(tag, value, last_epoch)
    return Export(job.id, run_dir, len(epochs), len(steps.steps), steps.bucket_steps)
