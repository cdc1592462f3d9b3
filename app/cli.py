"""The server's `trainery` commands: `up`, `api`, `worker`, `keys` and `artifacts`.

The `trainery` console script belongs to the client distribution (trainery_client.cli);
this module registers these commands with it through the `trainery.commands` entry point
(`register`), so a server install has every command and a client-only install the
client's. `api`, `worker` and `up` start the service's programs as subprocesses; `keys`
and `artifacts` open the database (and the object store). Run it from a checkout as
`python -m app.cli` too.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from trainery_client.cli.app import JsonOutput, fail, print_json
from trainery_client.cli.render import when

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379

server_app = typer.Typer(name="trainery", no_args_is_help=True, add_completion=False,
                         pretty_exceptions_enable=False,
                         help="Run the Trainery service (up, api, worker) and manage its keys.")
keys_app = typer.Typer(no_args_is_help=True,
                       help="API keys (server side: talks to TRAINERY_DATABASE_URL directly).")
server_app.add_typer(keys_app, name="keys")
artifacts_app = typer.Typer(no_args_is_help=True,
                            help="Artifact storage (server side: the database and the object "
                                 "store of TRAINERY_ARTIFACT_URL).")
server_app.add_typer(artifacts_app, name="artifacts")


def register(cli: typer.Typer) -> None:
    """The `trainery.commands` entry point: add the server's commands to the `trainery` app."""
    cli.registered_commands.extend(server_app.registered_commands)
    cli.registered_groups.extend(server_app.registered_groups)


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
        print_json({**info, "token": token})
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
        print_json(found)
        return
    table = Table("ID", "OWNER", "NAME", "PREFIX", "CREATED", "REVOKED", box=None,
                  pad_edge=False, header_style="bold")
    for k in found:
        table.add_row(k["id"], k["owner"], k["name"], k["prefix"] + "...",
                      when(k["created_at"]), when(k["revoked_at"]))
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
        fail(str(exc.detail))
    typer.echo(f"revoked {key_id}")


# -- artifact storage (server side) ----------------------------------------------


class BlobHome(str, Enum):
    """Where `artifacts migrate` moves the blobs."""

    s3 = "s3"
    sql = "sql"


@artifacts_app.command("migrate")
def artifacts_migrate(
    to: Annotated[BlobHome, typer.Option(
        "--to", help="s3: SQL chunks become objects; sql: objects become SQL chunks.")],
    json_output: JsonOutput = False,
) -> None:
    """Move every stored blob (datasets, checkpoints, models) into S3 or back into SQL.

    Each blob is checked against its sha256 before its row switches; a rerun finishes an
    interrupted run. Needs TRAINERY_ARTIFACT_URL (and the S3 endpoint and credentials).
    """
    from app.services import artifact_migration
    from app.settings import Settings

    try:
        moved = artifact_migration.run(f"to-{to.value}", Settings())
    except artifact_migration.MigrationError as exc:
        fail(str(exc))
    if json_output:
        print_json({"to": to.value, "blobs": moved.blobs, "bytes": moved.bytes})
        return
    typer.echo(f"moved {moved.blobs} blobs ({moved.bytes} bytes) to {to.value}")


# -- running the service ------------------------------------------------------


def queue_prefix() -> str:
    """The deployment's queue prefix, as the service reads it."""
    return os.environ.get("TRAINERY_QUEUE_PREFIX") or "trainery"


# How long the server keeps an idle keep-alive connection: longer than clients keep theirs
# (httpx, the SDK's transport: 5 s), so the client closes first. With both at 5 s (uvicorn's
# default), a request sent as the server closes its idle connection is lost ("server
# disconnected without sending a response"): a poll every 5 s hits that race.
KEEP_ALIVE_S = 75


# The event loop: asyncio's own, not uvloop (which uvicorn picks when it is installed).
# Under a closed loop of 64 pollers uvloop served as many requests a second but answered
# some of them hundreds of ms late: it defers a response's write to a later turn of its
# loop while it goes on reading new requests (MagicStack/uvloop#631, #123). A bare
# FastAPI app had a p99 of 111-261 ms on uvloop and 15-23 ms on asyncio, this app's
# /healthz 32-348 ms and 29-35 ms (docs/benchmarks.md, "The event loop").
LOOP = "asyncio"


def api_command(host: str, port: int, workers: int = 1, loop: str = LOOP) -> list[str]:
    """The API server: uvicorn on app.main:app, in `workers` processes on one port (loop:
    another event loop, for bench/service.py's comparison)."""
    # --no-access-log: the app logs its own request line (app/observability/logging.py);
    # with uvicorn's access logger merely disabled, uvicorn still built each line's
    # arguments (the client's address, the path) before the logger dropped it.
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", host, "--port", str(port),
            "--timeout-keep-alive", str(KEEP_ALIVE_S), "--loop", loop, "--no-access-log"]
    # uvicorn's own supervisor: it restarts a process that dies; each has its own
    # pools, admission gate and event-stream readers (docs/ARCHITECTURE.md).
    return [*argv, "--workers", str(workers)] if workers > 1 else argv


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
ApiWorkers = Annotated[int, typer.Option(
    "--workers", min=1, envvar="TRAINERY_API_WORKERS",
    help="API processes serving the one port (uvicorn --workers).")]

@server_app.command()
def api(host: Host = "127.0.0.1", port: Port = 8000, workers: ApiWorkers = 1) -> None:
    """Run the API server (uvicorn app.main:app), in --workers processes."""
    _exec(api_command(host, port, workers))


def fleet_command() -> list[str]:
    """The worker fleet: one pinned Celery worker per GPU, or CPU slots (workers/fleet.py)."""
    return [sys.executable, "-m", "workers.fleet"]


@server_app.command()
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


@server_app.command()
def up(host: Host = "127.0.0.1", port: Port = 8000, workers: ApiWorkers = 1) -> None:
    """Run the whole service here: migrate the database, start the worker fleet and the API.

    The broker is TRAINERY_BROKER_URL if set, else Redis on 127.0.0.1:6379 (started if
    redis-server is installed), else an embedded SQL broker. Ctrl-C stops both processes.
    """
    if not (PROJECT_ROOT / "alembic.ini").exists():
        fail(f"no alembic.ini in {PROJECT_ROOT}: `up` runs from a source checkout")
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
        fail("alembic upgrade head failed; see above")
    # Own sessions: a Ctrl-C reaches only us, and we pass on exactly one SIGTERM each.
    procs = {"worker": subprocess.Popen(fleet_command(), cwd=PROJECT_ROOT, env=env,
                                        start_new_session=True)}
    procs["API"] = subprocess.Popen(api_command(host, port, workers), cwd=PROJECT_ROOT, env=env,
                                    start_new_session=True)
    typer.echo(f"up: API on http://{host}:{port} (docs at /docs); Ctrl-C stops both")
    code = supervise(procs)
    if code:
        raise typer.Exit(code)


def main() -> None:
    """`python -m app.cli`: the whole `trainery` command (client and server) from a checkout."""
    from trainery_client.cli import app

    register(app)
    app()


if __name__ == "__main__":
    main()
