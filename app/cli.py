"""The `trainery` command: submit, follow and manage jobs; run the service's processes.

Job and dataset commands talk to the API through the SDK (app.client). The server
commands (`api`, `worker`, `up`) start the service's programs as subprocesses, so this
module never imports the service, Celery or a training framework.

Exit codes: 0 success; 1 the job failed; 2 the job was cancelled (and usage errors);
3 the request failed (the server said no, could not be reached, or the input is bad);
130 interrupted (Ctrl-C stops the command, not the job).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from app.client import Client, Event, Job, TraineryError
from app.client.api import DEFAULT_URL
from app.client.errors import describe_detail

EXIT_FAILED, EXIT_CANCELLED, EXIT_ERROR, EXIT_INTERRUPTED = 1, 2, 3, 130
STATUS_STYLES = {"queued": "yellow", "running": "cyan", "cancelling": "magenta",
                 "succeeded": "green", "failed": "red", "cancelled": "bright_black"}
PROJECT_ROOT = Path(__file__).resolve().parent.parent
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379

app = typer.Typer(name="trainery", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Submit training jobs to a Trainery service, follow them, download "
                       "the models; or run the service itself (api, worker, up).")
datasets_app = typer.Typer(no_args_is_help=True, help="Datasets a job can train on.")
app.add_typer(datasets_app, name="datasets")
keys_app = typer.Typer(no_args_is_help=True,
                       help="API keys (server side: talks to TRAINERY_DATABASE_URL directly).")
app.add_typer(keys_app, name="keys")

JobId = Annotated[str, typer.Argument(help="The job's id (job_...).")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
MaxWait = Annotated[float | None, typer.Option(
    min=0, help="Give up (exit 3) if the job has not ended after this many seconds.")]


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None
    timeout: float


@app.callback()
def _connection(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="TRAINERY_URL", help="The API's URL.")] = DEFAULT_URL,
    token: Annotated[str | None, typer.Option(
        envvar="TRAINERY_TOKEN", help="Sent as `Authorization: Bearer TOKEN`.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each request.")] = 30.0,
) -> None:
    ctx.obj = Connection(url, token, timeout)


@contextmanager
def _client(ctx: typer.Context) -> Iterator[Client]:
    """A client for the command; an API error ends the command with a message and exit code 3."""
    conn = ctx.find_object(Connection) or Connection(DEFAULT_URL, None, 30.0)
    try:
        with Client(conn.url, conn.token, timeout=conn.timeout) as client:
            yield client
    except TraineryError as exc:
        _fail(f"{exc.error}: {describe_detail(exc.detail) or exc}")
    except KeyboardInterrupt:
        # Only the client stops: a followed job trains on (`trainery cancel` stops it).
        Console(stderr=True).print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _fail(message: str) -> NoReturn:
    Console(stderr=True).print(Text(f"error: {message}", style="red"))
    raise typer.Exit(EXIT_ERROR)


def _print_json(data: Any, *, compact: bool = False) -> None:
    typer.echo(json.dumps(data, indent=None if compact else 2, default=str))


# -- formatting ---------------------------------------------------------------


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def _when(ts: datetime | None) -> str:
    return ts.astimezone().strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _metrics_text(values: Mapping[str, Any] | None) -> str:
    """`loss 0.1234  accuracy 0.95 ...`: the metrics, without bookkeeping fields."""
    if not values:
        return ""
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in values.items()
                     if k not in ("epoch", "epoch_time_s") and isinstance(v, (int, float, str)))


def _best_text(best: Mapping[str, Any], *, short: bool = False) -> str:
    """`val_loss 0.2141 at epoch 6` (short: without the epoch), from the job's `best`."""
    if "monitor" not in best or not isinstance(best.get("value"), (int, float)):
        return "" if short else _metrics_text(best)
    epoch = f" at epoch {best['epoch']}" if "epoch" in best and not short else ""
    return f"{best['monitor']} {best['value']:.4g}{epoch}"


def _event_text(event: Event) -> Text:
    text = Text(f"{event.ts.astimezone():%H:%M:%S} ", style="bright_black")
    if event.kind == "state":
        if event.from_status:
            text.append(f"{event.from_status} -> ")
        text.append_text(_status(event.to_status or "?"))
        text.append(f"  {event.message}")
    elif event.kind == "metrics":
        text.append(f"{event.message}  {_metrics_text(event.data)}")
    else:
        text.append(event.message)
    return text


def _job_details(job: Job) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("id", job.id), ("name", job.name), ("framework", job.framework),
        ("status", _status(job.status)), ("attempt", str(job.attempt)),
        ("worker", job.worker or "-"),
        ("progress", f"epoch {job.progress.epoch}/{job.progress.epochs}"),
        ("created", _when(job.created_at)), ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
    ]
    if job.metrics:
        rows.append(("metrics", _metrics_text(job.metrics)))
    if job.best:
        rows.append(("best", _best_text(job.best)))
    if job.pending_reason:
        rows.append(("waiting", job.pending_reason))
    if job.error:
        rows.append(("error", Text(f"{job.error.type}: {job.error.message}", style="red")))
    for key, value in rows:
        table.add_row(key, value)
    return table


def _summary(job: Job) -> Text:
    line = Text(f"{job.id} ({job.name}) ")
    line.append_text(_status(job.status))
    if job.status == "succeeded":
        line.append(f" after {job.progress.epoch} epochs  {_metrics_text(job.metrics)}")
    elif job.error:
        line.append(f": {job.error.type}: {job.error.message}")
    return line


def _exit_code(job: Job) -> int:
    return {"succeeded": 0, "cancelled": EXIT_CANCELLED}.get(job.status, EXIT_FAILED)


# -- following a job ----------------------------------------------------------


class EpochClock:
    """The time left, from the epochs' own durations (replayed epochs would fool a rate)."""

    def __init__(self) -> None:
        self.recent: list[float] = []

    def eta(self, data: Mapping[str, Any], epochs: int) -> str:
        seconds = data.get("epoch_time_s")
        if isinstance(seconds, (int, float)):
            self.recent = [*self.recent[-4:], float(seconds)]
        if not self.recent or not isinstance(data.get("epoch"), int):
            return "-"
        left = max(epochs - data["epoch"], 0)
        return _duration(sum(self.recent) / len(self.recent) * left)


class JobProgress(Progress):
    """A progress bar over epochs with the latest metrics on a line of their own below it."""

    metrics = ""

    def get_renderables(self) -> Iterator[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.metrics:
            yield Text(f"  {self.metrics}", style="bright_black")


def _follow(client: Client, job_id: str, as_json: bool, max_wait: float | None) -> int:
    """Show the job live until it ends; its exit code (0 succeeded, 1 failed, 2 cancelled)."""
    if as_json:
        for event in client.follow(job_id, timeout=max_wait):
            _print_json(event.to_json(), compact=True)
        job = client.get(job_id)
        _print_json(job.to_json(), compact=True)
        return _exit_code(job)
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
        progress.metrics = _metrics_text(job.metrics)
        for event in client.follow(job_id, timeout=max_wait):
            if event.kind == "metrics" and event.data:
                total = int(progress.tasks[0].total or 0)
                progress.metrics = _metrics_text(event.data)
                progress.update(task, completed=event.data.get("epoch", 0),
                                eta=clock.eta(event.data, total))
                continue
            if event.kind == "state" and event.to_status:
                progress.update(task, description=f"{job.name} {event.to_status}")
            progress.console.print(_event_text(event))
    job = client.get(job_id)
    console.print(_summary(job))
    return _exit_code(job)


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
    """A job spec from a YAML or JSON file, with `dotted.key=value` overrides (values as YAML)."""
    try:
        text = path.read_text()
        spec = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        _fail(f"cannot read the spec {path}: {exc}")
    if not isinstance(spec, dict):
        _fail(f"{path} does not hold a job spec (a mapping at the top level)")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            _fail(f"--set wants KEY=VALUE (e.g. training.epochs=3), not {item!r}")
        try:
            _set_path(spec, key, yaml.safe_load(raw))
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
            _fail(f"--set {item}: no such place in the spec ({exc!r})")
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
    with _client(ctx) as client:
        job = client.submit(spec, idempotency_key=idempotency_key)
        if json_output:
            _print_json(job.to_json(), compact=follow)
        else:
            Console().print(Text.assemble(f"submitted {job.id} ({job.name}, {job.framework}): ",
                                          _status(job.status)))
        if follow:
            code = _follow(client, job.id, json_output, max_wait)
    if code:
        raise typer.Exit(code)


@app.command()
def status(ctx: typer.Context, job_id: JobId, json_output: JsonOutput = False) -> None:
    """Show a job: status, progress, latest metrics, error."""
    with _client(ctx) as client:
        job = client.get(job_id)
    if json_output:
        _print_json(job.to_json())
    else:
        Console().print(_job_details(job))


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="Show at most this many; 0 = all.")] = 20,
    json_output: JsonOutput = False,
) -> None:
    """List jobs, newest first."""
    with _client(ctx) as client:
        jobs = client.list(status, page_size=min(limit or 200, 200))
        shown = list(islice(jobs, limit) if limit else jobs)
    if json_output:
        _print_json([job.to_json() for job in shown])
        return
    table = Table(Column("ID", no_wrap=True, min_width=28), "NAME",
                  Column("STATUS", no_wrap=True), Column("EPOCH", no_wrap=True),
                  Column("CREATED", no_wrap=True), "BEST", box=None, pad_edge=False,
                  header_style="bold")
    for job in shown:
        created = job.created_at.astimezone().strftime("%m-%d %H:%M") if job.created_at else ""
        table.add_row(job.id, job.name, _status(job.status),
                      f"{job.progress.epoch}/{job.progress.epochs}", created,
                      _best_text(job.best, short=True) if job.best else "")
    Console().print(table)


@app.command("follow")
def follow_job(ctx: typer.Context, job_id: JobId, max_wait: MaxWait = None,
               json_output: JsonOutput = False) -> None:
    """Follow a job live: a progress bar over epochs with the latest metrics and ETA.

    Exits 0 if it succeeded, 1 if it failed, 2 if it was cancelled. With --json, prints one
    JSON object per line: each event, then the finished job.
    """
    with _client(ctx) as client:
        code = _follow(client, job_id, json_output, max_wait)
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
    with _client(ctx) as client:
        if follow:
            for event in client.follow(job_id, timeout=max_wait):
                if json_output:
                    _print_json(event.to_json(), compact=True)
                else:
                    console.print(_event_text(event))
            return
        events = client.events(job_id)
    if json_output:
        _print_json([event.to_json() for event in events])
        return
    for event in events:
        console.print(_event_text(event))


@app.command()
def metrics(ctx: typer.Context, job_id: JobId, json_output: JsonOutput = False) -> None:
    """Print a job's per-epoch metrics."""
    with _client(ctx) as client:
        rows = client.metrics(job_id)
    if json_output:
        _print_json([row.to_json() for row in rows])
        return
    names = list(dict.fromkeys(k for row in rows for k in row.values()))
    table = Table("epoch", *names)
    for row in rows:
        values = row.values()
        table.add_row(str(row.epoch), *(f"{values[n]:.4g}" if isinstance(values.get(n), float)
                                        else str(values.get(n, "")) for n in names))
    Console().print(table)


def _job_action(ctx: typer.Context, job_id: str, action: str, json_output: bool) -> None:
    with _client(ctx) as client:
        job = client.cancel(job_id) if action == "cancel" else client.retry(job_id)
    if json_output:
        _print_json(job.to_json())
    else:
        Console().print(Text.assemble(f"{job.id}: ", _status(job.status)))


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
    with _client(ctx) as client:
        saved = client.download_model(job_id, output, format=format)
    if json_output:
        _print_json(saved.to_json())
    else:
        Console().print(f"saved {saved.path} ({saved.size} bytes, sha256 {saved.sha256})")


@datasets_app.command("list")
def datasets_list(ctx: typer.Context, json_output: JsonOutput = False) -> None:
    """List the datasets a job can train on."""
    with _client(ctx) as client:
        found = client.datasets()
    if json_output:
        _print_json([d.to_json() for d in found])
        return
    table = Table(Column("ID", no_wrap=True), "TASK", Column("SAMPLES", justify="right"),
                  Column("SHAPE", no_wrap=True), Column("CLASSES", justify="right"),
                  "DESCRIPTION", box=None, pad_edge=False, header_style="bold")
    for d in found:
        shape = "x".join(map(str, d.sample_shape)) if d.sample_shape else "-"
        table.add_row(d.id, d.task, str(d.n_samples or "-"), shape,
                      str(d.num_classes or "-"), d.description or d.name)
    Console().print(table)


@datasets_app.command("show")
def datasets_show(ctx: typer.Context, dataset_id: Annotated[str, typer.Argument()],
                  json_output: JsonOutput = False) -> None:
    """Show one dataset: shape, classes, size."""
    with _client(ctx) as client:
        dataset = client.dataset(dataset_id)
    if json_output:
        _print_json(dataset.to_json())
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in dataset.to_json().items():
        if value is not None and value != "":
            table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    Console().print(table)


@datasets_app.command("upload")
def datasets_upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                         help="An .npz, .csv or .zip of images.")],
    name: Annotated[str | None, typer.Option(help="Default: the file's name.")] = None,
    task: Annotated[str | None, typer.Option(help="classification or regression.")] = None,
    target: Annotated[str | None, typer.Option(help="CSV: the label column.")] = None,
    image_size: Annotated[str | None, typer.Option(help="Image zip: HEIGHTxWIDTH.")] = None,
    format: Annotated[str | None, typer.Option(
        help="npz, csv or zip; default: from the file name.")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    field: Annotated[list[str] | None, typer.Option(
        help="Any other form field, KEY=VALUE; repeatable.")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Upload a dataset file; train on it with {"dataset": {"id": ...}} (docs/datasets.md)."""
    extra = dict(item.partition("=")[::2] for item in field or ())
    options = {k: v for k, v in (("target", target), ("image_size", image_size),
                                 ("format", format)) if v is not None}
    with _client(ctx) as client:
        dataset = client.upload_dataset(path, name=name, task=task, description=description,
                                        **options, **extra)
    if json_output:
        _print_json(dataset.to_json())
    else:
        Console().print(f"{dataset.id}: {dataset.name}, {dataset.task}, "
                        f"{dataset.n_samples} samples of shape {dataset.sample_shape}")


@datasets_app.command("delete")
def datasets_delete(ctx: typer.Context, dataset_id: Annotated[str, typer.Argument()]) -> None:
    """Delete an uploaded dataset and its stored data."""
    with _client(ctx) as client:
        client.delete_dataset(dataset_id)
    Console().print(f"deleted {dataset_id}")


# -- API keys (server side) ----------------------------------------------------


@contextmanager
def _store() -> Iterator[Any]:
    """A write transaction on the service's database (server-side commands only)."""
    from app.db import make_engine, make_sessionmaker, transaction
    from app.settings import Settings

    settings = Settings()  # read now: the environment is this command's
    engine = make_engine(settings.resolved_database_url())
    try:
        with transaction(make_sessionmaker(engine)) as session:
            yield session
    finally:
        engine.dispose()


def _key_json(key: Any) -> dict[str, Any]:
    return {"id": key.id, "owner": key.owner, "name": key.name, "prefix": key.prefix,
            "created_at": key.created_at, "revoked_at": key.revoked_at}


@keys_app.command("create")
def keys_create(owner: Annotated[str, typer.Option(help="Who the key acts as.")],
                name: Annotated[str, typer.Option(help="A label for the key.")] = "",
                json_output: JsonOutput = False) -> None:
    """Create an API key; its token is printed once and stored only as a hash."""
    from app.services import keys

    with _store() as session:
        key, token = keys.create(session, owner, name or owner)
        info = _key_json(key)
    if json_output:
        _print_json({**info, "token": token})
        return
    typer.echo(f"created {key.id} for owner {owner!r}; use it as TRAINERY_TOKEN "
               "(it is not shown again):")
    typer.echo(token)


@keys_app.command("list")
def keys_list(owner: Annotated[str | None, typer.Option()] = None,
              json_output: JsonOutput = False) -> None:
    """List API keys (never their tokens)."""
    from app.services import keys

    with _store() as session:
        found = [_key_json(k) for k in keys.list_keys(session, owner)]
    if json_output:
        _print_json(found)
        return
    table = Table("ID", "OWNER", "NAME", "PREFIX", "CREATED", "REVOKED", box=None,
                  pad_edge=False, header_style="bold")
    for k in found:
        table.add_row(k["id"], k["owner"], k["name"], k["prefix"] + "...",
                      _when(k["created_at"]), _when(k["revoked_at"]))
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")]) -> None:
    """Revoke an API key: requests with it are refused from now on."""
    from app.core.errors import NotFound
    from app.services import keys

    try:
        with _store() as session:
            keys.revoke(session, key_id)
    except NotFound as exc:
        _fail(str(exc.detail))
    typer.echo(f"revoked {key_id}")


# -- running the service ------------------------------------------------------


def queue_prefix() -> str:
    """The deployment's queue prefix, as the service reads it."""
    return os.environ.get("TRAINERY_QUEUE_PREFIX") or "trainery"


def api_command(host: str, port: int) -> list[str]:
    """The API server: uvicorn on app.main:app."""
    return [sys.executable, "-m", "uvicorn", "app.main:app", "--host", host, "--port", str(port)]


def worker_command(name: str, queues: Sequence[str] = ("default",),
                   loglevel: str = "INFO") -> list[str]:
    """One Celery worker, flags as scripts/run.sh gives them: one job at a time, no prefetch."""
    prefix = queue_prefix()
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
            "-Q", ",".join(f"{prefix}.{q}" for q in queues),
            "--pool", "solo", "--concurrency", "1", "--prefetch-multiplier", "1",
            "--without-gossip", "--without-mingle", "-n", f"{name}@%h", "--loglevel", loglevel]


def _exec(argv: list[str], env: Mapping[str, str] | None = None) -> NoReturn:
    """Become argv (signals and the exit status are then the program's own)."""
    sys.stdout.flush()
    sys.stderr.flush()
    environ = dict(env or os.environ)
    if os.name == "posix":
        os.execve(argv[0], argv, environ)
    raise typer.Exit(subprocess.call(argv, env=environ))


Host = Annotated[str, typer.Option(help="Address to listen on.")]
Port = Annotated[int, typer.Option(envvar="TRAINERY_PORT", help="Port to listen on.")]


@app.command()
def api(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """Run the API server (uvicorn app.main:app)."""
    _exec(api_command(host, port))


def fleet_command() -> list[str]:
    """The worker fleet: one pinned Celery worker per GPU, or CPU slots (workers/fleet.py)."""
    return [sys.executable, "-m", "workers.fleet"]


@app.command()
def worker(
    gpus: Annotated[str | None, typer.Option(
        help="GPU indices to run on, e.g. 0,1 (default: ask nvidia-smi).")] = None,
    cpu_slots: Annotated[int | None, typer.Option(
        min=1, help="CPU workers to start when there is no GPU (default 1).")] = None,
    queue: Annotated[list[str] | None, typer.Option(
        help="Extra job queue (pool) to serve (repeatable).")] = None,
    gpu: Annotated[int | None, typer.Option(
        min=0, help="Run ONE worker pinned to this GPU instead of the fleet.")] = None,
    name: Annotated[str | None, typer.Option(
        help="Run ONE worker with this name instead of the fleet.")] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run the worker fleet: one worker per GPU (or CPU slots), each one job at a time.

    With --gpu or --name, run a single worker process instead (what the fleet starts).
    """
    env = dict(os.environ)
    if gpu is not None or name is not None:
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        default_name = f"gpu{gpu}" if gpu is not None else "cpu0"
        _exec(worker_command(name or default_name, queue or ["default", "gpu"], loglevel), env)
        return
    if gpus is not None:
        env["TRAINERY_GPUS"] = gpus
    if cpu_slots is not None:
        env["TRAINERY_CPU_SLOTS"] = str(cpu_slots)
    if queue:
        env["TRAINERY_WORKER_QUEUES"] = ",".join(queue)
    _exec(fleet_command(), env)


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def choose_broker(env: Mapping[str, str], data_dir: Path) -> tuple[str, str]:
    """(broker URL, why): TRAINERY_BROKER_URL, a running Redis, one we start, or kombu's SQL one."""
    if env.get("TRAINERY_BROKER_URL"):
        return env["TRAINERY_BROKER_URL"], "from TRAINERY_BROKER_URL"
    redis_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
    if _reachable(REDIS_HOST, REDIS_PORT):
        return redis_url, f"Redis at {REDIS_HOST}:{REDIS_PORT} (found running)"
    server = shutil.which("redis-server")
    if server:
        subprocess.run([server, "--daemonize", "yes", "--bind", REDIS_HOST,
                        "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no",
                        "--dir", str(data_dir), "--logfile", str(data_dir / "redis.log")],
                       check=False)
        for _ in range(50):
            if _reachable(REDIS_HOST, REDIS_PORT):
                return redis_url, f"Redis at {REDIS_HOST}:{REDIS_PORT} (started redis-server)"
            time.sleep(0.1)
    return (f"sqla+sqlite:///{data_dir / 'broker.db'}",
            f"embedded (kombu SQLAlchemy transport on {data_dir / 'broker.db'}); no Redis "
            "here. Set TRAINERY_BROKER_URL to use one.")


def supervise(procs: dict[str, subprocess.Popen[bytes]]) -> int:
    """Wait while all run; stop the rest when one ends or on a signal (twice: kill). Exit code."""
    signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    stops = 0

    def stop(signum: int | None = None, frame: FrameType | None = None) -> None:
        nonlocal stops
        stops += 1
        for proc in procs.values():
            if proc.poll() is None:
                if stops == 1:
                    proc.terminate()  # both shut down gracefully on SIGTERM
                else:
                    with suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)

    previous = {s: signal.signal(s, stop) for s in signals}
    try:
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.2)
        code = 0
        if not stops:
            name, proc = next((n, p) for n, p in procs.items() if p.returncode is not None)
            typer.echo(f"up: the {name} exited ({proc.returncode}); stopping the rest", err=True)
            code = proc.returncode or 1
            stop()
        for proc in procs.values():
            proc.wait()
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@app.command()
def up(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """Run the whole service here: migrate the database, start the worker fleet and the API.

    The broker is TRAINERY_BROKER_URL if set, else Redis on 127.0.0.1:6379 (started if
    redis-server is installed), else an embedded SQL broker. Ctrl-C stops both processes.
    """
    if not (PROJECT_ROOT / "alembic.ini").exists():
        _fail(f"no alembic.ini in {PROJECT_ROOT}: `up` runs from a source checkout")
    env = dict(os.environ)
    data_dir = Path(env.get("TRAINERY_DATA_DIR") or "var").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env["TRAINERY_DATA_DIR"] = str(data_dir)
    env["TRAINERY_BROKER_URL"], why = choose_broker(env, data_dir)
    typer.echo(f"up: broker = {env['TRAINERY_BROKER_URL']} [{why}]")
    typer.echo("up: database = " + (env.get("TRAINERY_DATABASE_URL")
                                     or f"sqlite file {data_dir / 'trainery.db'}"))
    migrated = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"],
                              cwd=PROJECT_ROOT, env=env, check=False)
    if migrated.returncode:
        _fail("alembic upgrade head failed; see above")
    # Own sessions: a Ctrl-C reaches only us, and we pass on exactly one SIGTERM each.
    procs = {"worker": subprocess.Popen(fleet_command(), cwd=PROJECT_ROOT, env=env,
                                        start_new_session=True)}
    procs["API"] = subprocess.Popen(api_command(host, port), cwd=PROJECT_ROOT, env=env,
                                    start_new_session=True)
    typer.echo(f"up: API on http://{host}:{port} (docs at /docs); Ctrl-C stops both")
    code = supervise(procs)
    if code:
        raise typer.Exit(code)


def main() -> None:
    """The `trainery` console script."""
    app()


if __name__ == "__main__":
    main()
