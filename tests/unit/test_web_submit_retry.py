"""The dashboard's submit and retry forms store the job, then send its wake-up after commit."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from app.services.dispatch import BROKER_DOWN
from app.settings import Settings

# Nothing listens here: the wake-up fails, and the job's events say so, which shows the
# route tried to send it once the job was committed.
NO_BROKER = "redis://127.0.0.1:1/0"


def _csrf(client: TestClient) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/new").text)
    assert found is not None
    return found.group(1)


def _messages(client: TestClient, job_id: str) -> list[str]:
    r = client.get(f"/v1/jobs/{job_id}/events")
    assert r.status_code == 200, r.text
    return [e["message"] for e in r.json()]


def test_submit_then_retry_from_the_pages(database_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=database_url, data_dir=tmp_path, broker_url=NO_BROKER)
    with TestClient(create_app(settings)) as client:
        token = _csrf(client)
        spec = {"name": "form", "framework": "pytorch", "dataset": {"builtin": "iris"},
                "model": {"preset": "mlp"}}
        r = client.post("/new", data={"csrf": token, "spec": json.dumps(spec)},
                        follow_redirects=False)
        assert r.status_code == 303, r.text
        job_id = r.headers["location"].rsplit("/", 1)[1]
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        assert _messages(client, job_id).count(BROKER_DOWN) == 1

        r = client.post(f"/jobs/{job_id}/cancel", data={"csrf": token}, follow_redirects=False)
        assert r.status_code == 303, r.text
        r = client.post(f"/jobs/{job_id}/retry", data={"csrf": token}, follow_redirects=False)
        assert r.status_code == 303, r.text
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        assert _messages(client, job_id).count(BROKER_DOWN) == 2
