"""The job commands: submit, status, list, follow, logs, metrics, cancel, retry, download."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from trainery_client import Client, Job
from trainery_client.cli.app import (
    JobId,
    JsonOutput,
    MaxWait,
    app,
    connect,
    fail,
    outcome_code,
    print_json,
)
from trainery_client.cli.render import (
    EpochClock,
    JobProgress,
    best_text,
    event_text,
    job_details,
    metrics_text,
    short_time,
    status_text,
    summary,
)
from trainery_client.documents import load_document


def exit_code(job: Job) -> int:
    """0 succeeded, 1 failed, 2 cancelled."""
    return outcome_code(job.status)



def follow_live(client: Client, job_id: str, as_json: bool, max_wait: float | None) -> int:
    """Show the job live until it ends; its exit code (0 succeeded, 1 failed, 2 cancelled)."""
    if as_json:
        for event in client.follow(job_id, timeout=max_wait):
            print_json(event.to_json(), compact=True)
        job = client.get(job_id)
        print_json(job.to_json(), compact=True)
        return exit_code(job)
    console = Console()
    job = client.get(job_id)
    if job.pending_reason:
        console.print(Text(f"waiting: {job.pending_reason}", style="bright_black"))
    clock = EpochClock()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("epochs"), TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"))
    with JobProgress(*columns, console=console) as progress:
        task = progress.add_task(f"{job.name} {job.status}", total=job.progress.epochs or None,
                                 completed=job.progress.epoch, eta="-")
        progress.metrics = metrics_text(job.metrics)
        for event in client.follow(job_id, timeout=max_wait):
            if event.kind == "metrics" and event.data:
                total = int(progress.tasks[0].total or 0)
                progress.metrics = metrics_text(event.data)
                progress.update(task, completed=event.data.get("epoch", 0),
                                eta=clock.eta(event.data, total))
                continue
            if event.kind == "state" and event.to_status:
                progress.update(task, description=f"{job.name} {event.to_status}")
            progress.console.print(event_text(event))
    job = client.get(job_id)
    console.print(summary(job))
    return exit_code(job)


# -- job commands -------------------------------------------------------------


def _set_path(spec: dict[str, Any], dotted: str, value: Any) -> None:
    """spec[a][b][0] = value for `a.b.0`, creating mappings on the way."""
    keys = dotted.split(".")
    node: Any = spec
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def load_spec(path: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A job spec (or study request) from a YAML or JSON file, with `dotted.key=value`
    overrides (values as YAML)."""
    try:
        spec = load_document(path)
    except ValueError as exc:
        fail(str(exc))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            fail(f"--set wants KEY=VALUE (e.g. training.epochs=3), not {item!r}")
        try:
            _set_path(spec, key, yaml.safe_load(raw))
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
            fail(f"--set {item}: no such place in the spec ({exc!r})")
    return spec


@app.command()
def submit(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                         help="The job spec, YAML or JSON.")],
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Follow the job until it ends.")] = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a field: dotted.path=value (YAML value); repeatable.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(
        help="Reuse a key to make a repeated submit return the first job.")] = None,
    max_wait: MaxWait = None,
    json_output: JsonOutput = False,
) -> None:
    """Submit a job spec; with --follow, exit like `follow` does."""
    spec = load_spec(file, set_ or ())
    code = 0
    with connect(ctx) as client:
        job = client.submit(spec, idempotency_key=idempotency_key)
        if json_output:
            print_json(job.to_json(), compact=follow)
        else:
            Console().print(Text.assemble(f"submitted {job.id} ({job.name}, {job.framework}): ",
                                          status_text(job.status)))
        if follow:
            code = follow_live(client, job.id, json_output, max_wait)
    if code:
        raise typer.Exit(code)


@app.command()
def status(ctx: typer.Context, job_id: JobId, json_output: JsonOutput = False) -> None:
    """Show a job: status, progress, latest metrics, error."""
    with connect(ctx) as client:
        job = client.get(job_id)
    if json_output:
        print_json(job.to_json())
    else:
        Console().print(job_details(job))


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="Show at most this many; 0 = all.")] = 20,
    json_output: JsonOutput = False,
) -> None:
    """List jobs, newest first."""
    with connect(ctx) as client:
        jobs = client.list(status, page_size=min(limit or 200, 200))
        shown = list(islice(jobs, limit) if limit else jobs)
    if json_output:
        print_json([job.to_json() for job in shown])
        return
    table = Table(Column("ID", no_wrap=True, min_width=28), "NAME",
                  Column("STATUS", no_wrap=True), Column("EPOCH", no_wrap=True),
                  Column("CREATED", no_wrap=True), "BEST", box=None, pad_edge=False,
                  header_style="bold")
    for job in shown:
        created = short_time(job.created_at)
        table.add_row(job.id, job.name, status_text(job.status),
                      f"{job.progress.epoch}/{job.progress.epochs}", created,
                      best_text(job.best, short=True) if job.best else "")
    Console().print(table)


@app.command("follow")
def follow_job(ctx: typer.Context, job_id: JobId, max_wait: MaxWait = None,
               json_output: JsonOutput = False) -> None:
    """Follow a job live: a progress bar over epochs with the latest metrics and ETA.

    Exits 0 if it succeeded, 1 if it failed, 2 if it was cancelled. With --json, prints one
    JSON object per line: each event, then the finished job.
    """
    with connect(ctx) as client:
        code = follow_live(client, job_id, json_output, max_wait)
    if code:
        raise typer.Exit(code)


@app.command()
def logs(
    ctx: typer.Context, job_id: JobId,
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Keep printing until the job ends.")] = False,
    max_wait: MaxWait = None,
    json_output: JsonOutput = False,
) -> None:
    """Print a job's events: state changes, epoch metrics, log lines."""
    console = Console()
    with connect(ctx) as client:
        if follow:
            for event in client.follow(job_id, timeout=max_wait):
                if json_output:
                    print_json(event.to_json(), compact=True)
                else:
                    console.print(event_text(event))
            return
        events = client.events(job_id)
    if json_output:
        print_json([event.to_json() for event in events])
        return
    for event in events:
        console.print(event_text(event))


@app.command()
def metrics(ctx: typer.Context, job_id: JobId, json_output: JsonOutput = False) -> None:
    """Print a job's per-epoch metrics."""
    with connect(ctx) as client:
        rows = client.metrics(job_id)
    if json_output:
        print_json([row.to_json() for row in rows])
        return
    names = list(dict.fromkeys(k for row in rows for k in row.values()))
    table = Table("epoch", *names)
    for row in rows:
        values = row.values()
        table.add_row(str(row.epoch), *(f"{values[n]:.4g}" if isinstance(values.get(n), float)
                                        else str(values.get(n, "")) for n in names))
    Console().print(table)


def _job_action(ctx: typer.Context, job_id: str, action: str, json_output: bool) -> None:
    with connect(ctx) as client:
        job = client.cancel(job_id) if action == "cancel" else client.retry(job_id)
    if json_output:
        print_json(job.to_json())
    else:
        Console().print(Text.assemble(f"{job.id}: ", status_text(job.status)))


@app.command()
def cancel(ctx: typer.Context, job_id: JobId, json_output: JsonOutput = False) -> None:
    """Cancel a job: a queued one ends at once, a running one within seconds."""
    _job_action(ctx, job_id, "cancel", json_output)


@app.command()
def retry(ctx: typer.Context, job_id: JobId, json_output: JsonOutput = False) -> None:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
    _job_action(ctx, job_id, "retry", json_output)


@app.command()
def download(
    ctx: typer.Context, job_id: JobId,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="File or folder to save to (default: the server's filename "
                               "in the current folder).")] = None,
    format: Annotated[str | None, typer.Option(
        help="torchscript, state_dict, onnx (PyTorch) or keras, onnx (Keras).")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Download a succeeded job's model; the file's sha256 is checked against the server's."""
    with connect(ctx) as client:
        saved = client.download_model(job_id, output, format=format)
    if json_output:
        print_json(saved.to_json())
    else:
        Console().print(f"saved {saved.path} ({saved.size} bytes, sha256 {saved.sha256})")
