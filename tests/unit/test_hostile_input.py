"""Hostile and careless requests: an oversized body, numbers JSON cannot store, ids SQL cannot
hold. Each is a 4xx in the API's error shape that names the field; nothing is stored."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import anyio
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.dataset_files import blobs, npz_bytes
from tests.specs import tiny_spec

# Nothing listens here: wake-ups fail (and say so in the job's events); no test needs a worker.
NO_BROKER = "redis://127.0.0.1:1/0"
BODY_CAP = 64 * 1024
TOO_BIG = 2**63  # one past the largest signed 64-bit integer


@pytest.fixture(scope="module")
def client(module_database_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(database_url=module_database_url, data_dir=tmp_path_factory.mktemp("d"),
                        broker_url=NO_BROKER, max_json_body_bytes=BODY_CAP, max_conversions=1,
                        conversion_wait_s=0.3)
    with TestClient(create_app(settings)) as c:
        yield c


def _stored(client: TestClient) -> tuple[int, int]:
    """How many jobs and studies the store holds."""
    return (len(client.get("/v1/jobs").json()["data"]),
            len(client.get("/v1/studies").json()["data"]))


def _post_raw(client: TestClient, path: str, text: str, method: str = "POST") -> dict[str, str]:
    """Send JSON text as is (json.dumps would refuse Infinity only with allow_nan=False)."""
    r = client.request(method, path, content=text.encode(),
                       headers={"Content-Type": "application/json"})
    assert r.status_code == 422, (text[:200], r.status_code, r.text)
    body = r.json()
    assert body["error"] == "validation_error"
    return {p["path"]: p["message"] for p in body["detail"]}


def test_a_body_past_the_cap_is_refused_before_it_is_parsed(client: TestClient) -> None:
    spec = tiny_spec(name="x" * BODY_CAP)  # a spec whose name alone passes the cap
    before = _stored(client)
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "payload_too_large"
    assert "TRAINERY_MAX_JSON_BODY_BYTES" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        text = json.dumps(spec).encode()
        for i in range(0, len(text), 4096):
            yield text[i:i + 4096]

    r = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "payload_too_large"
    assert _stored(client) == before


def test_non_finite_floats_are_refused_naming_the_field(client: TestClient) -> None:
    before = _stored(client)
    spec = json.dumps(tiny_spec())[:-1]  # room for one more top-level field
    found = _post_raw(client, "/v1/jobs", spec + ', "training": {"lr_schedule": '
                      '{"name": "cosine", "min_lr": Infinity}}}')
    assert found == {"training.lr_schedule.min_lr": "Input should be a finite number"}
    found = _post_raw(client, "/v1/jobs", spec + ', "training": {"early_stopping": '
                      '{"min_delta": NaN}}}')
    assert found == {"training.early_stopping.min_delta": "Input should be a finite number"}
    found = _post_raw(client, "/v1/jobs", spec + ', "dataset": {"builtin": "iris", '
                      '"validation_split": -Infinity}}')
    assert list(found) == ["dataset.validation_split"]

    study = {"name": "s", "base": tiny_spec(), "objective": {"metric": "val_accuracy",
                                                              "mode": "max"},
             "searcher": {"name": "random", "max_trials": 2}}
    text = json.dumps(study)[:-1]
    found = _post_raw(client, "/v1/studies", text + ', "space": {"training.optimizer.lr": '
                      '{"type": "uniform", "low": 0.001, "high": Infinity}}}')
    # Pydantic puts the distribution's type in the path (the union's tag).
    assert found == {"space.training.optimizer.lr.uniform.high":
                     "Input should be a finite number"}
    found = _post_raw(client, "/v1/studies", text + ', "space": {"training.optimizer.name": '
                      '{"type": "choice", "values": ["adam", NaN]}}}')
    assert found == {"space.training.optimizer.name.choice.values[1]":
                     "Input should be a finite number"}
    _post_raw(client, "/v1/studies/study_x", '{"max_trials": Infinity}', method="PATCH")
    assert _stored(client) == before


def test_integers_outside_64_bits_are_refused_naming_the_field(client: TestClient) -> None:
    before = _stored(client)
    spec = tiny_spec()
    spec["dataset"]["seed"] = TOO_BIG
    assert list(_post_raw(client, "/v1/jobs", json.dumps(spec))) == ["dataset.seed"]
    spec = tiny_spec(model={"layers": [{"type": "dense", "units": 4},
                                       {"type": "dense", "units": -TOO_BIG - 1}]})
    assert list(_post_raw(client, "/v1/jobs", json.dumps(spec))) == ["model.layers[1].units"]
    spec = tiny_spec(checkpoint={"every_epochs": TOO_BIG})
    assert list(_post_raw(client, "/v1/jobs", json.dumps(spec))) == ["checkpoint.every_epochs"]
    assert _stored(client) == before


def test_event_ids_past_64_bits_are_a_422_not_a_500(client: TestClient) -> None:
    job = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    r = client.get(f"/v1/jobs/{job}/events", params={"after": TOO_BIG})
    assert r.status_code == 422, r.text
    assert [p["path"] for p in r.json()["detail"]] == ["query.after"]
    assert client.get(f"/v1/jobs/{job}/events", params={"after": TOO_BIG - 1}).json() == []

    r = client.get(f"/v1/jobs/{job}/events", headers={"Accept": "text/event-stream",
                                                       "Last-Event-ID": str(TOO_BIG)})
    assert r.status_code == 422, r.text
    assert [p["path"] for p in r.json()["detail"]] == ["header.last-event-id"]


def test_uploads_past_the_conversion_cap_wait_then_get_a_503(client: TestClient) -> None:
    x, y = blobs(30)
    files = {"file": ("d.npz", npz_bytes(x=x, y=y), "application/octet-stream")}
    release = threading.Event()
    conversions = client.app.state.conversions  # type: ignore[attr-defined]

    async def convert_elsewhere() -> None:  # another upload holds the one conversion slot
        async with conversions.slot():
            await anyio.to_thread.run_sync(release.wait)

    client.portal.start_task_soon(convert_elsewhere)  # type: ignore[attr-defined]
    try:
        r = client.post("/v1/datasets", files=files)
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "service_busy" and "conversion" in r.json()["detail"]
        assert int(r.headers["Retry-After"]) >= 1
    finally:
        release.set()
    assert client.post("/v1/datasets", files=files).status_code == 201
