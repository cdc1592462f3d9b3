"""The HTTP contract: bad input answers 4xx naming the field and stores nothing; pagination."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, Stack
from tests.specs import design_spec, tiny_spec

pytestmark = pytest.mark.integration


def job_count(stack: Stack) -> int:
    total, cursor = 0, None
    while True:
        page = stack.client.get(
            "/v1/jobs", params={"limit": 200, **({"cursor": cursor} if cursor else {})}).json()
        total += len(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return total


@pytest.mark.parametrize(("body", "path"), [
    (design_spec(framework="jax"), "framework"),
    (design_spec(model={"layers": [{"type": "lstm", "units": 8}]}), "model.layers[0]"),
    (design_spec(training={"epochs": -3}), "training.epochs"),
    (design_spec(training={"epochs": 10**9}), "training.epochs"),
    (design_spec(training={"batch_size": 0}), "training.batch_size"),
    (design_spec(dataset={"builtin": "imagenet"}), "dataset.builtin"),
    ({k: v for k, v in design_spec().items() if k != "framework"}, "framework"),
    (design_spec(priority="high"), "priority"),
    (design_spec(extra_field=True), "extra_field"),
    # Specs that could never train (issue 12): ~4e9 parameters, 4 TB of synthetic data,
    # and 63 conv2d of 8192 filters on megapixel images.
    (design_spec(model={"layers": [{"type": "dense", "units": 8192}] * 64}), "model.layers"),
    (design_spec(dataset={"builtin": "synthetic", "n_samples": 10**6, "sample_shape": [10**6],
                          "num_classes": 2}), "dataset.n_samples"),
    (design_spec(dataset={"builtin": "synthetic", "n_samples": 10,
                          "sample_shape": [1000, 1000, 1], "num_classes": 2},
                 model={"layers": [*[{"type": "conv2d", "filters": 8192}] * 63,
                                   {"type": "global_avgpool"}]}), "model.layers"),
])
def test_bad_specs_are_422_with_the_path_and_store_nothing(stack: Stack, body: dict[str, Any],
                                                           path: str) -> None:
    before = job_count(stack)
    r = stack.client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["error"] == "validation_error"
    paths = [p["path"] for p in err["detail"]]
    assert path in paths, paths
    assert all(p["message"] for p in err["detail"])
    assert job_count(stack) == before


def test_not_json_is_422(stack: Stack) -> None:
    r = stack.client.post("/v1/jobs", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "validation_error"


def test_unknown_job_is_404_everywhere(stack: Stack) -> None:
    for suffix in ("", "/metrics", "/events", "/checkpoints", "/model", "/model/card"):
        r = stack.client.get(f"/v1/jobs/job_missing{suffix}")
        assert r.status_code == 404 and r.json()["error"] == "job_not_found", suffix


def test_unknown_format_is_422(stack: Stack) -> None:
    job = stack.submit(tiny_spec(epochs=1))
    stack.wait(job["id"])
    r = stack.client.get(f"/v1/jobs/{job['id']}/model", params={"format": "pickle"})
    assert r.status_code == 422 and r.json()["detail"][0]["path"] == "format"


def test_list_is_newest_first_with_cursor_pagination_and_status_filter(stack: Stack) -> None:
    ids = [stack.submit(tiny_spec(epochs=1, name=f"page-{i}", resources={"queue": "parked"}))["id"]
           for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "status": "queued"}
        if cursor:
            params["cursor"] = cursor
        page = stack.client.get("/v1/jobs", params=params).json()
        assert len(page["data"]) <= 2
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [i for i in seen if i in ids] == ids[::-1]
    assert stack.client.get("/v1/jobs", params={"status": "sleeping"}).status_code == 422
    assert stack.client.get("/v1/jobs", params={"cursor": "garbage"}).status_code == 422
    assert stack.client.get("/v1/jobs", params={"limit": 0}).status_code == 422
    for job_id in ids:  # leave nothing queued for other tests
        assert stack.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202


def test_datasets_are_listed(stack: Stack) -> None:
    data = stack.client.get("/v1/datasets").json()["data"]
    names = {d["id"] for d in data}
    assert {"digits", "iris", "wine", "breast_cancer", "diabetes", "synthetic"} <= names
    digits = stack.client.get("/v1/datasets/digits").json()
    assert digits["sample_shape"] == [64] and digits["num_classes"] == 10


def test_the_api_process_imports_no_framework() -> None:
    code = ("import sys, app.main\n"
            "from fastapi.testclient import TestClient\n"
            "bad = [m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules]\n"
            "print(','.join(bad) or 'clean')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_running_api_server_has_no_framework_loaded(stack: Stack) -> None:
    assert stack.api is not None
    maps = Path(f"/proc/{stack.api.pid}/maps").read_text()
    assert "libtorch" not in maps and "tensorflow" not in maps


def test_an_idle_keep_alive_connection_outlives_the_clients_own_expiry(stack: Stack) -> None:
    """A connection idle for longer than a client keeps one (httpx: 5 s) still answers:
    the server keeps it longer (app/cli.py KEEP_ALIVE_S), so the client closes first and a
    poll sent after a 5 s wait never meets a connection the server is closing."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() and conn.sock is not None
        time.sleep(5.5)  # past uvicorn's default keep-alive (5 s)
        conn.request("GET", "/healthz")  # the same socket: http.client does not reconnect
        assert conn.getresponse().status == 200
    finally:
        conn.close()
