"""The `trainery` command: the app, its connection options, and the commands others add.

Job, dataset and study commands (in this package) talk to the API through the SDK. A server
install adds its own commands (`up`, `api`, `worker`, `keys`) through the
`trainery.commands` entry-point group, loaded only when the command runs: importing this
package never imports the service.

Exit codes: 0 success; 1 the job (or study) failed; 2 it was cancelled (and usage errors);
3 the request failed (the server said no, could not be reached, or the input is bad);
130 interrupted (Ctrl-C stops the command, not the job).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from trainery_client import Client, TraineryError
from trainery_client._calls import DEFAULT_URL
from trainery_client.errors import describe_detail

COMMANDS_GROUP = "trainery.commands"
EXIT_FAILED, EXIT_CANCELLED, EXIT_ERROR, EXIT_INTERRUPTED = 1, 2, 3, 130

app = typer.Typer(name="trainery", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Submit training jobs to a Trainery service, follow them, download "
                       "the models; on a server install, run the service itself (up, api, "
                       "worker, keys).")
datasets_app = typer.Typer(no_args_is_help=True, help="Datasets a job can train on.")
app.add_typer(datasets_app, name="datasets")
study_app = typer.Typer(no_args_is_help=True,
                        help="Hyperparameter studies: every trial is an ordinary job.")
app.add_typer(study_app, name="study")

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
def connect(ctx: typer.Context) -> Iterator[Client]:
    """A client for the command; an API error ends the command with a message and exit code 3."""
    conn = ctx.find_object(Connection) or Connection(DEFAULT_URL, None, 30.0)
    try:
        with Client(conn.url, conn.token, timeout=conn.timeout) as client:
            yield client
    except TraineryError as exc:
        fail(f"{exc.error}: {describe_detail(exc.detail) or exc}")
    except KeyboardInterrupt:
        # Only the client stops: a followed job trains on (`trainery cancel` stops it).
        Console(stderr=True).print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def outcome_code(state: str) -> int:
    """A finished job's or study's exit code: 0 succeeded, 1 failed, 2 cancelled."""
    return {"succeeded": 0, "cancelled": EXIT_CANCELLED}.get(state, EXIT_FAILED)


def fail(message: str) -> NoReturn:
    """Print the message in red and end the command with exit code 3."""
    Console(stderr=True).print(Text(f"error: {message}", style="red"))
    raise typer.Exit(EXIT_ERROR)


def print_json(data: Any, *, compact: bool = False) -> None:
    """Data as JSON on stdout: indented, or one line (`compact`) for streams."""
    typer.echo(json.dumps(data, indent=None if compact else 2, default=str))


def load_commands(cli: typer.Typer) -> list[str]:
    """Let each installed `trainery.commands` entry point add its commands; their names."""
    loaded = []
    for entry in entry_points(group=COMMANDS_GROUP):
        try:
            register = entry.load()
            register(cli)
        except Exception as exc:  # a broken plugin must not take the client's commands along
            Console(stderr=True).print(Text(f"warning: the commands of {entry.value} are "
                                            f"unavailable: {exc!r}", style="yellow"))
            continue
        loaded.append(entry.name)
    return loaded


def main() -> None:
    """The `trainery` console script: the client's commands and every installed plugin's."""
    load_commands(app)
    app()
