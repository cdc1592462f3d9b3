"""API keys: `trainery keys` on the server's database, bearer tokens that act as an owner."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import server_app
from tests.harness import Stack, migrate
from tests.specs import tiny_spec
from trainery_client import Client

pytestmark = pytest.mark.integration


def keys_cli(stack: Stack, *args: str) -> str:
    result = CliRunner().invoke(server_app, ["keys", *args],
                                env={"TRAINERY_DATABASE_URL": stack.database_url})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_keys_make_requests_act_as_their_owner(stack: Stack) -> None:
    created = json.loads(keys_cli(stack, "create", "--owner", "alice", "--json"))
    token = created["token"]
    assert token.startswith("trn_") and created["owner"] == "alice"
    listed = json.loads(keys_cli(stack, "list", "--owner", "alice", "--json"))
    assert [k["id"] for k in listed] == [created["id"]] and "token" not in listed[0]

    with Client(stack.url, token) as alice:
        job = alice.submit(tiny_spec(epochs=1, name="alices"))
        assert alice.get(job.id).name == "alices"
        assert [j.id for j in alice.list()] == [job.id]  # only her jobs
    # Without the token (the default owner) the job does not exist.
    assert stack.client.get(f"/v1/jobs/{job.id}").status_code == 404
    assert job.id not in {j["id"] for j in stack.client.get("/v1/jobs").json()["data"]}

    bad = stack.client.get("/v1/jobs", headers={"Authorization": "Bearer trn_nope"})
    assert bad.status_code == 401 and bad.json()["error"] == "unauthorized"
    keys_cli(stack, "revoke", created["id"])
    gone = stack.client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert gone.status_code == 401


def test_auth_required_refuses_requests_without_a_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'trainery.db'}"
    migrate(url)
    stack = Stack(url, tmp_path, extra_env={"TRAINERY_AUTH_REQUIRED": "true"})
    try:
        stack.start_api()
        r = stack.client.get("/v1/jobs")
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        token = json.loads(keys_cli(stack, "create", "--owner", "bob", "--json"))["token"]
        ok = httpx.get(f"{stack.url}/v1/jobs", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert stack.client.get("/healthz").status_code == 200  # probes need no key
    finally:
        stack.stop()
