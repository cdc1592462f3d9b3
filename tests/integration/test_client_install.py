"""The client distribution alone: a clean venv with only ./client drives a real stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT, Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding trainery-client (not editable) and its dependencies, nothing else."""
    tmp = tmp_path_factory.mktemp("client-venv")
    # Build from a copy: a non-editable build writes build/ and *.egg-info next to the source.
    source = shutil.copytree(ROOT / "client", tmp / "client",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", str(source)],
                   check=True, timeout=600, env=env)
    return venv


# The client install is the same against either backend: once is enough (and a skip
# inside the test would come after its module fixture had built the venv).
@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_a_client_only_install_submits_and_follows_a_job(client_venv: Path, stack: Stack,
                                                         tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRAINERY_TOKEN")}
    env["TRAINERY_URL"] = stack.url
    python, trainery = (str(client_venv / "bin" / name) for name in ("python", "trainery"))
    missing = ["fastapi", "sqlalchemy", "celery", "numpy", "torch", "app", "workers"]
    code = f"import importlib.util as u; print([m for m in {missing!r} if u.find_spec(m)])"
    found = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60,
                           env=env, cwd=tmp_path, check=True)
    assert found.stdout.strip() == "[]"  # nothing of the server came with the client

    followed = subprocess.run(
        [trainery, "submit", str(ROOT / "examples" / "digits-mlp.yaml"),
         "--set", "training.epochs=3", "--follow", "--max-wait", "300"],
        capture_output=True, text=True, timeout=360, env=env, cwd=tmp_path)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert "succeeded after 3 epochs" in followed.stdout
    job_id = followed.stdout.split()[1]
    assert stack.job(job_id)["status"] == "succeeded"

    # The server's commands are not there without the server.
    up = subprocess.run([trainery, "up"], capture_output=True,
                        text=True, timeout=60, env=env, cwd=tmp_path)
    assert up.returncode == 2 and "No such command" in up.stderr
