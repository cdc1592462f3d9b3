"""docker-compose.yml and the Dockerfile point at things that exist (no Docker engine here)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import tomllib
import yaml

from app.cli import api_command

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def dockerfile_targets() -> set[str]:
    return set(re.findall(r"^FROM \S+ AS (\w+)", (ROOT / "Dockerfile").read_text(), re.M))


def project(path: str) -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / path).read_text())["project"]  # type: ignore[no-any-return]


def check_command(argv: list[str]) -> None:
    """Each command a service runs resolves to something this project provides."""
    scripts = project("client/pyproject.toml")["scripts"]  # the `trainery` command's owner
    exe = argv[0]
    if exe == "alembic":
        assert argv[1:] == ["upgrade", "head"] and (ROOT / "alembic.ini").exists()
        assert list((ROOT / "migrations" / "versions").glob("*.py"))
    elif exe == "uvicorn":
        module, attr = argv[1].split(":")
        assert hasattr(importlib.import_module(module), attr)
        # Served as `trainery api` serves it (app/cli.py): the same keep-alive and loop,
        # without uvicorn's access log.
        served = api_command("0.0.0.0", 8000)
        for option in ("--timeout-keep-alive", "--loop"):
            assert argv[argv.index(option) + 1] == served[served.index(option) + 1], option
        assert "--no-access-log" in argv and "--no-access-log" in served
    elif exe == "celery":
        assert argv[1] == "-A"
        app = importlib.import_module(argv[2])
        assert "trainery.wake" in app.app.tasks or importlib.import_module("workers.tasks")
        assert "--pool" in argv and argv[argv.index("--pool") + 1] == "solo"
    elif exe == "trainery":
        assert exe in scripts
        module, func = scripts[exe].split(":")
        assert hasattr(importlib.import_module(module), func)
        # The server's commands (worker, up, ...) reach it through this entry point.
        plugin = project("pyproject.toml")["entry-points"]["trainery.commands"]["server"]
        module, func = plugin.split(":")
        server_app = importlib.import_module(module).server_app
        assert argv[1] in {c.name or c.callback.__name__ for c in server_app.registered_commands}
    elif exe == "weed":  # the SeaweedFS image: all-in-one server with the S3 gateway
        assert argv[1] == "server" and "-s3" in argv
    elif exe in ("redis-server", "python"):
        pass  # provided by the image
    else:
        raise AssertionError(f"unknown command {argv}")


def test_compose_services_and_their_commands() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(services)
    for name, svc in services.items():
        if "build" in svc:
            assert svc["build"]["target"] in dockerfile_targets(), name
        if "command" in svc:
            check_command([*svc.get("entrypoint", []), *svc["command"]])


def test_worker_reserves_a_gpu_and_api_waits_for_migrations() -> None:
    services = compose()["services"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    env = services["api"]["environment"]
    assert env["TRAINERY_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["TRAINERY_BROKER_URL"].startswith("redis://")


def test_dockerfile_cmds_exist() -> None:
    text = (ROOT / "Dockerfile").read_text()
    # The server depends on trainery-client: every image installs ./client alongside.
    assert "COPY client ./client" in text
    assert "pip install ./client .\n" in text and 'pip install ./client ".[torch,keras]"' in text
    assert dockerfile_targets() == {"base", "api", "worker"}
    assert "TORCH_INDEX" in text  # the CUDA build argument
    for cmd in re.findall(r'^CMD (\[.*?\])\s*$', text, re.M | re.S):
        check_command(yaml.safe_load(cmd.replace("\\\n", " ")))


def test_transport_options_only_for_redis() -> None:
    from app.broker import make_celery
    from app.settings import Settings

    redis = make_celery(Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert redis.conf.broker_transport_options["visibility_timeout"] == 3600
    embedded = make_celery(Settings(broker_url="sqla+sqlite:////tmp/b.db"))
    assert "visibility_timeout" not in (embedded.conf.broker_transport_options or {})


def _stages() -> dict[str, list[str]]:
    """The Dockerfile's instructions, per build stage."""
    stages: dict[str, list[str]] = {}
    current = ""
    for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM \S+ AS (\w+)", line)
        if match:
            current = match.group(1)
        stages.setdefault(current, []).append(line)
    return stages


def test_images_run_as_an_unprivileged_user_who_owns_only_the_data_dir() -> None:
    stages = _stages()
    assert any("useradd" in i and "--uid 10001" in i and "chown trainery:trainery /var/lib/trainery"
               in i for i in stages["base"])
    for target in ("api", "worker"):
        users = [i.split()[1] for i in stages[target] if i.startswith("USER ")]
        assert users and users[-1] == "trainery", target
        # Nothing runs as root after the switch: installs happen before it.
        after = stages[target][[i.startswith("USER ") for i in stages[target]].index(True):]
        assert not any(i.startswith("RUN ") for i in after), target
