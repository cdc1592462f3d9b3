"""`trainery tensorboard JOB_ID... --logdir runs/`: jobs' curves as TensorBoard event files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from trainery_client.cli.app import JsonOutput, app, connect, fail, print_json
from trainery_client.tensorboard import write_run

MAX_POINTS = 10_000  # the server's cap on a step series' points


@app.command()
def tensorboard(
    ctx: typer.Context,
    job_ids: Annotated[list[str], typer.Argument(help="The jobs' ids (job_...).")],
    logdir: Annotated[Path, typer.Option(help="Where to write: one folder per job.")] = Path(
        "runs"),
    max_points: Annotated[int, typer.Option(
        min=2, max=MAX_POINTS, help="At most this many points per step curve (the server "
                                    "keeps each bucket's last value).")] = MAX_POINTS,
    json_output: JsonOutput = False,
) -> None:
    """Write jobs' epoch and step curves and hparams (the flattened spec, the final metrics)
    as TensorBoard event files; then run `tensorboard --logdir LOGDIR`."""
    exports = []
    with connect(ctx) as client:
        for job_id in job_ids:
            job = client.get(job_id)
            epochs = client.metrics(job_id)
            steps = client.step_metrics(job_id, max_points=max_points)
            try:
                exports.append(write_run(logdir, job, epochs, steps))
            except RuntimeError as exc:
                fail(str(exc))
    if json_output:
        print_json([{"job_id": e.job_id, "run_dir": str(e.run_dir), "epochs": e.epoch_points,
                     "steps": e.step_points, "bucket_steps": e.bucket_steps} for e in exports])
        return
    console = Console()
    for e in exports:
        every = f" (buckets of {e.bucket_steps} steps)" if e.bucket_steps > 1 else ""
        console.print(f"{e.job_id}: {e.epoch_points} epochs, {e.step_points} step points{every}"
                      f" -> {e.run_dir}")
    console.print(f"view them with: tensorboard --logdir {logdir}")
