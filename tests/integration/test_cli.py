"""The `trainery` CLI: job commands against the real stack, server commands as real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

import app.cli as server_cli
from app.cli import server_app, worker_command
from tests.harness import REDIS_URL, ROOT, Stack, free_port
from tests.specs import tiny_spec
from trainery_client import Client
from trainery_client.cli import app
from trainery_client.cli.jobs import load_spec

pytestmark = pytest.mark.integration
Cli = Callable[..., Result]


@pytest.fixture(scope="module")
def cli(stack: Stack) -> Cli:
    """Run `trainery --url <stack> ARGS...` in-process."""
    runner = CliRunner()

    def run(*args: str) -> Result:
        if args[0] in ("submit", "follow"):  # a stuck job fails its test, not the run
            args = (args[0], "--max-wait", "180", *args[1:])
        return runner.invoke(app, ["--url", stack.url, *args], env={"TRAINERY_TOKEN": ""})

    return run


def spec_file(tmp_path: Path, spec: Any, name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def diabetes_job(cli: Cli) -> dict[str, Any]:
    """The diabetes example, shortened, submitted and followed by the CLI."""
    result = cli("submit", str(ROOT / "examples" / "diabetes-regression.yaml"),
                 "--set", "training.epochs=2", "--set", "checkpoint.every_epochs=1",
                 "--set", "training.log_every_steps=3",
                 "--follow", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    submitted, events = lines[0], lines[1:-1]
    final: dict[str, Any] = lines[-1]
    assert submitted["id"] == final["id"] and submitted["status"] in ("queued", "running")
    assert [e["to_status"] for e in events if e["kind"] == "state"][-1] == "succeeded"
    assert final["status"] == "succeeded" and final["progress"]["epoch"] == 2
    return final


def test_read_commands_and_json_output(diabetes_job: dict[str, Any], cli: Cli,
                                       tmp_path: Path) -> None:
    job_id = diabetes_job["id"]
    status = cli("status", job_id, "--json")
    assert status.exit_code == 0 and json.loads(status.stdout)["spec"]["task"] == "regression"
    human = cli("status", job_id)
    assert human.exit_code == 0 and "succeeded" in human.stdout and "mae" in human.stdout

    listed = cli("list", "--status", "succeeded", "--limit", "0", "--json")
    assert job_id in [j["id"] for j in json.loads(listed.stdout)]
    assert cli("list").exit_code == 0

    events = json.loads(cli("logs", job_id, "--json").stdout)
    assert [e["to_status"] for e in events if e["kind"] == "state"] == ["queued", "running",
                                                                       "succeeded"]
    logs = cli("logs", job_id)
    assert logs.exit_code == 0 and "epoch 2/2" in logs.stdout and "-> succeeded" in logs.stdout

    rows = json.loads(cli("metrics", job_id, "--json").stdout)
    assert [r["epoch"] for r in rows] == [1, 2] and "val_mae" in rows[0]
    assert "val_mae" in cli("metrics", job_id).stdout

    followed = cli("follow", job_id)
    assert followed.exit_code == 0 and "succeeded" in followed.stdout

    saved = cli("download", job_id, "-o", str(tmp_path / "diabetes.pt"), "--json")
    assert saved.exit_code == 0, saved.output
    info = json.loads(saved.stdout)
    assert Path(info["path"]) == tmp_path / "diabetes.pt" and info["size"] > 0
    weights = cli("download", job_id, "-o", str(tmp_path), "--format", "state_dict")
    assert weights.exit_code == 0 and "sha256" in weights.stdout

    datasets = json.loads(cli("datasets", "list", "--json").stdout)
    assert "diabetes" in [d["id"] for d in datasets]


def test_tensorboard_writes_what_the_api_serves(diabetes_job: dict[str, Any], cli: Cli,
                                               stack: Stack, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata as hparams_metadata
    from tensorboard.plugins.hparams import plugin_data_pb2

    job_id = diabetes_job["id"]
    result = cli("tensorboard", job_id, "--logdir", str(tmp_path / "runs"), "--json")
    assert result.exit_code == 0, result.output
    [written] = json.loads(result.stdout)
    events = EventAccumulator(written["run_dir"], size_guidance={"scalars": 0})
    events.Reload()

    def scalars(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars(tag)]

    epochs = stack.client.get(f"/v1/jobs/{job_id}/metrics").json()
    steps = stack.client.get(f"/v1/jobs/{job_id}/metrics",
                             params={"series": "steps", "max_points": 10_000}).json()
    assert steps["steps"] and written["steps"] == len(steps["steps"])
    tags = events.Tags()["scalars"]
    assert {f"epochs/{k}" for k in epochs[0] if k != "epoch"} | \
        {f"steps/{k}" for k in steps["metrics"]} <= set(tags)
    for name in ("loss", "val_mae", "lr"):
        assert scalars(f"epochs/{name}") == [(r["epoch"], pytest.approx(r[name])) for r in epochs]
    for name, bucket in steps["metrics"].items():
        assert scalars(f"steps/{name}") == [(s, pytest.approx(v)) for s, v in
                                            zip(steps["steps"], bucket["last"], strict=True)]

    # The hparams plugin: the flattened spec, and the final metrics beside the scalars.
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    plugin = plugin_data_pb2.HParamsPluginData.FromString(
        content[hparams_metadata.SESSION_START_INFO_TAG])
    hparams = plugin.session_start_info.hparams
    assert hparams["training.log_every_steps"].number_value == 3
    assert hparams["task"].string_value == "regression"
    assert hparams["model.layers[0].units"].number_value == \
        diabetes_job["spec"]["model"]["layers"][0]["units"]
    assert scalars("final/val_mae") == [(2, pytest.approx(diabetes_job["metrics"]["val_mae"]))]

    again = cli("tensorboard", job_id, "--logdir", str(tmp_path / "runs"))
    assert again.exit_code == 0 and "tensorboard --logdir" in again.stdout
    assert len(list(Path(written["run_dir"]).glob("events.out.tfevents.*"))) == 1


# The example trains alike on either backend: once keeps the suite quick.
@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_lenet_example_trains(stack: Stack, cli: Cli) -> None:
    result = cli("submit", str(ROOT / "examples" / "lenet-synthetic.yaml"),
                 "--set", "training.epochs=1", "--set", "dataset.n_samples=500", "--follow")
    assert result.exit_code == 0, result.output
    assert "succeeded after 1 epochs" in result.stdout


def test_follow_exits_1_when_the_job_fails(cli: Cli, tmp_path: Path) -> None:
    bad = spec_file(tmp_path, tiny_spec(name="conv-on-vectors",
                                        model={"layers": [{"type": "conv2d", "filters": 4}]}))
    result = cli("submit", str(bad), "--follow")
    assert result.exit_code == 1, result.output
    assert "failed" in result.stdout and "user_error" in result.stdout


def test_follow_exits_2_when_the_job_is_cancelled(stack: Stack, cli: Cli) -> None:
    with Client(stack.url) as sdk:
        job = sdk.submit(tiny_spec(name="cli-cancel", epochs=500))

    def cancel_once_training() -> None:
        with Client(stack.url) as other:
            deadline = time.monotonic() + 60
            while other.get(job.id).progress.epoch < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            other.cancel(job.id)

    canceller = threading.Thread(target=cancel_once_training)
    canceller.start()
    followed = cli("follow", job.id)
    canceller.join()
    assert followed.exit_code == 2, followed.output
    assert "cancelled" in followed.stdout


def test_cancel_and_retry_commands(diabetes_job: dict[str, Any], cli: Cli,
                                   tmp_path: Path) -> None:
    # No worker takes queue "idle", so the job stays queued until cancelled: no race.
    submitted = cli("submit", str(spec_file(tmp_path, tiny_spec(resources={"queue": "idle"}))),
                    "--json")
    job_id = json.loads(submitted.stdout)["id"]
    cancelled = cli("cancel", job_id)
    assert cancelled.exit_code == 0 and f"{job_id}: cancelled" in cancelled.stdout
    not_ready = cli("download", job_id, "-o", str(tmp_path))
    assert not_ready.exit_code == 3 and "model_not_ready" in not_ready.stderr
    again = cli("cancel", job_id)
    assert again.exit_code == 3 and "invalid_transition" in again.stderr

    retried = cli("retry", job_id, "--json")
    assert retried.exit_code == 0 and json.loads(retried.stdout)["status"] == "queued"
    assert json.loads(cli("cancel", job_id, "--json").stdout)["status"] == "cancelled"
    succeeded = cli("retry", diabetes_job["id"])
    assert succeeded.exit_code == 3 and "invalid_transition" in succeeded.stderr


def test_dataset_commands(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "houses.csv"
    data.write_text("rooms,price\n" + "".join(f"{i},{i * 1.5}\n" for i in range(1, 21)))
    uploaded = cli("datasets", "upload", str(data), "--target", "price", "--task",
                   "regression", "--json")
    assert uploaded.exit_code == 0, uploaded.output
    dataset = json.loads(uploaded.stdout)
    assert dataset["task"] == "regression" and dataset["n_samples"] == 20
    shown = cli("datasets", "show", dataset["id"])
    assert shown.exit_code == 0 and "houses" in shown.stdout
    assert dataset["id"] in cli("datasets", "list").stdout
    assert cli("datasets", "delete", dataset["id"]).exit_code == 0
    gone = cli("datasets", "show", dataset["id"], "--json")
    assert gone.exit_code == 3 and "not_found" in gone.stderr


def test_errors_exit_3_with_the_servers_message(cli: Cli, tmp_path: Path) -> None:
    missing = cli("status", "job_doesnotexist")
    assert missing.exit_code == 3 and "job_not_found" in missing.stderr
    invalid = cli("submit", str(spec_file(tmp_path, tiny_spec(training={"epochs": 0}))))
    assert invalid.exit_code == 3 and "training.epochs" in invalid.stderr
    unreachable = CliRunner().invoke(app, ["--url", f"http://127.0.0.1:{free_port()}",
                                           "status", "job_x"])
    assert unreachable.exit_code == 3 and "connection_failed" in unreachable.stderr


# tests/integration/test_studies.py runs studies on both backends; the CLI only reads
# their answers: SQLite alone here.
@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_a_study_from_yaml_to_the_best_model(stack: Stack, cli: Cli, tmp_path: Path) -> None:
    # The docs' example, cut to two one-or-two-epoch trials on PyTorch: asha pauses both at
    # rung 1, promotes one to epoch 2 and prunes the other.
    created = cli("study", "create", str(ROOT / "examples" / "studies" / "digits.yaml"),
                  "--set", "searcher.max_trials=2", "--set", "searcher.max_rungs=2",
                  "--set", "base.training.epochs=2", "--set", "space.framework.values=[pytorch]",
                  "--follow", "--poll", "0.5", "--max-wait", "300")
    assert created.exit_code == 0, created.output
    study_id = created.stdout.split()[0]
    assert study_id.startswith("study_")
    # The live table's last frame: every trial, its params and state, and the best so far.
    assert all(word in created.stdout for word in ("lr", "units", "VAL_ACCURACY", "pruned",
                                                   "completed", "best: trial #", "succeeded")), \
        created.stdout

    status = json.loads(cli("study", "status", study_id, "--json").stdout)
    assert status["state"] == "succeeded" and status["trials"]["total"] == 2
    assert status["trials"]["completed"] == status["trials"]["pruned"] == 1
    best = status["best_trial"]
    human = cli("study", "status", study_id)
    assert human.exit_code == 0 and f"trial #{best['number']}" in human.stdout

    trials = json.loads(cli("study", "trials", study_id, "--json").stdout)
    assert sorted(t["state"] for t in trials) == ["completed", "pruned"]
    assert all(set(t["params"]) == {"training.optimizer.lr", "model.layers[0].units",
                                    "framework"} for t in trials)
    assert [t["pruned"] for t in trials if t["state"] == "pruned"] == [True]
    table = cli("study", "trials", study_id)
    assert table.exit_code == 0 and "completed" in table.stdout and "pruned" in table.stdout
    listed = json.loads(cli("study", "list", "--json", "--limit", "0").stdout)
    assert study_id in [s["id"] for s in listed]
    followed = cli("study", "follow", study_id, "--json")  # already ended: one snapshot
    assert followed.exit_code == 0
    assert [json.loads(line)["study"]["state"] for line in followed.stdout.splitlines()] == [
        "succeeded"]

    saved = cli("download", best["job_id"], "-o", str(tmp_path), "--json")
    assert saved.exit_code == 0, saved.output
    assert Path(json.loads(saved.stdout)["path"]).stat().st_size > 0


def test_study_cancel_and_its_errors(cli: Cli, tmp_path: Path) -> None:
    request = {"name": "cli-cancel", "base": tiny_spec(epochs=500),
               "space": {"training.optimizer.lr": {"type": "loguniform", "low": 1e-3,
                                                   "high": 0.1}},
               "objective": {"metric": "val_accuracy", "mode": "max"},
               "searcher": {"name": "random", "max_trials": 4}}
    created = cli("study", "create", str(spec_file(tmp_path, request, "study.json")), "--json")
    assert created.exit_code == 0, created.output
    study_id = json.loads(created.stdout)["id"]
    cancelled = cli("study", "cancel", study_id)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    again = cli("study", "cancel", study_id)
    assert again.exit_code == 3 and "invalid_transition" in again.stderr
    followed = cli("study", "follow", study_id)
    assert followed.exit_code == 2 and "cancelled by the user" in followed.stdout
    missing = cli("study", "status", "study_doesnotexist")
    assert missing.exit_code == 3 and "study_not_found" in missing.stderr
    request["space"] = {"model.layers[7].units": {"type": "int", "low": 1, "high": 4}}
    refused = cli("study", "create", str(spec_file(tmp_path, request, "bad.json")))
    assert refused.exit_code == 3 and "space.model.layers[7].units" in refused.stderr


# -- without a server ---------------------------------------------------------


def test_spec_files_and_overrides(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "examples" / "digits-mlp.yaml",
                     ["training.epochs=3", "model.layers.1.rate=0.2", "name=short",
                      "training.optimizer={name: sgd, lr: 0.1}"])
    assert spec["training"]["epochs"] == 3 and spec["model"]["layers"][1]["rate"] == 0.2
    assert spec["name"] == "short" and spec["training"]["optimizer"] == {"name": "sgd",
                                                                         "lr": 0.1}
    result = CliRunner().invoke(app, ["submit", str(spec_file(tmp_path, [1, 2]))])
    assert result.exit_code == 3 and "mapping" in result.stderr


def test_worker_and_api_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[list[str], dict[str, str] | None]] = []
    monkeypatch.setattr(server_cli, "_exec", lambda argv, env=None: ran.append((argv, env)))
    monkeypatch.setenv("TRAINERY_QUEUE_PREFIX", "acme")
    runner = CliRunner()
    assert runner.invoke(server_app, ["worker", "--gpu", "1", "--queue", "default",
                               "--queue", "big"]).exit_code == 0
    assert runner.invoke(server_app, ["api", "--port", "9001"]).exit_code == 0
    assert runner.invoke(server_app, ["api", "--workers", "3"]).exit_code == 0
    (worker_argv, worker_env), (api_argv, _), (several_argv, _) = ran[:3]
    del ran[:3]
    assert several_argv[-2:] == ["--workers", "3"]
    assert worker_argv == worker_command("gpu1", ["default", "big"])
    fleet = runner.invoke(server_app, ["worker", "--gpus", "0,2", "--queue", "gpu.a100"])
    assert fleet.exit_code == 0
    fleet_argv, fleet_env = ran.pop()
    assert fleet_argv[1:] == ["-m", "workers.fleet"]
    assert fleet_env is not None and fleet_env["TRAINERY_GPUS"] == "0,2"
    assert fleet_env["TRAINERY_WORKER_QUEUES"] == "gpu.a100"
    assert worker_argv[1:] == [
        "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "acme.default,acme.big",
        "--pool", "solo", "--concurrency", "1", "--prefetch-multiplier", "1",
        "--without-gossip", "--without-mingle", "-n", "gpu1@%h", "--loglevel", "INFO"]
    assert worker_env is not None and worker_env["CUDA_VISIBLE_DEVICES"] == "1"
    assert api_argv[1:] == ["-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                            "--port", "9001", "--timeout-keep-alive", str(server_cli.KEEP_ALIVE_S),
                            "--loop", "asyncio", "--no-access-log"]


def test_broker_choice_falls_back_to_the_embedded_one(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    assert server_cli.choose_broker({"TRAINERY_BROKER_URL": "redis://x:1/0"}, tmp_path) == (
        "redis://x:1/0", "from TRAINERY_BROKER_URL")
    monkeypatch.setattr(server_cli, "_reachable", lambda host, port: False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    url, why = server_cli.choose_broker({}, tmp_path)
    assert url == f"sqla+sqlite:///{tmp_path}/broker.db" and "embedded" in why


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
            and _ppid(p) == pid]


def _ppid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_up_runs_migrations_a_worker_and_the_api(tmp_path: Path) -> None:
    """`up --workers 2`: two API processes on one port; requests and a live follow work
    through them."""
    port = free_port()
    env = {**os.environ, "TRAINERY_DATA_DIR": str(tmp_path / "var"),
           "TRAINERY_BROKER_URL": "", "TRAINERY_DATABASE_URL": "",
           "TRAINERY_QUEUE_PREFIX": f"up{port}", "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(port),
                             "--workers", "2"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.3)
        uvicorn = [c for c in _children(proc.pid)
                   if b"uvicorn" in Path(f"/proc/{c}/cmdline").read_bytes()]
        servers = [c for c in _children(uvicorn[0])  # not multiprocessing's resource tracker
                   if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(uvicorn) == 1 and len(servers) == 2
        with Client(url) as sdk:
            job = sdk.submit(tiny_spec(name="via-up", epochs=2))
            events = list(sdk.follow(job.id, timeout=90))
            assert events[-1].to_status == "succeeded"
            assert [e.id for e in events] == [e.id for e in sdk.events(job.id)]
        for _ in range(10):  # fresh connections: either process may take each
            assert httpx.get(f"{url}/v1/jobs/{job.id}", timeout=10).json()["status"] == \
                "succeeded"
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    output = (tmp_path / "up.log").read_text()
    assert code == 0, output
    expected_broker = "Redis at 127.0.0.1:6379" if REDIS_URL.startswith(
        "redis://127.0.0.1:6379") else "broker ="
    assert expected_broker in output and (tmp_path / "var" / "trainery.db").exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_the_trainery_command_has_the_client_and_the_server_commands() -> None:
    """The console script is the client's; the server's commands arrive by entry point."""
    exe = Path(sys.executable).with_name("trainery")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    listed = {line.split()[1] for line in out.stdout.splitlines()
              if line.startswith("│ ") and len(line.split()) > 2}
    assert {"submit", "follow", "download", "datasets", "up", "api", "worker", "keys"} <= listed
