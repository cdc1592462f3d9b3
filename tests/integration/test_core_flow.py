"""The whole flow through HTTP on real processes: submit, poll, metrics, download, load."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.harness import Stack, plain_python
from tests.specs import design_spec, tiny_spec

pytestmark = pytest.mark.integration


def test_design_spec_trains_and_downloads_a_torchscript_model(stack: Stack, tmp_path: Path) -> None:
    created = stack.client.post("/v1/jobs", json=design_spec())
    assert created.status_code == 201, created.text
    job = created.json()
    assert created.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempt"] == 0
    assert job["pending_reason"]

    seen_epochs: list[int] = []
    seen_status = set()
    while job["status"] not in ("succeeded", "failed"):
        time.sleep(0.05)
        job = stack.job(job["id"])
        seen_status.add(job["status"])
        if job["status"] == "running" and job["metrics"]:
            seen_epochs.append(job["progress"]["epoch"])
    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 1 and job["worker"].startswith("w1@")
    assert seen_epochs == sorted(seen_epochs)
    assert job["progress"]["epoch"] <= 20 and job["best"]["monitor"] == "val_loss"

    rows = stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    for row in rows:
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s"} <= set(row)
    assert rows[-1]["val_accuracy"] > 0.9
    assert rows[0]["loss"] > rows[-1]["loss"]

    events = stack.client.get(f"/v1/jobs/{job['id']}/events").json()
    states = [e["to_status"] for e in events if e["kind"] == "state"]
    assert states == ["queued", "running", "succeeded"]
    # The harness's workers are given one CPU thread each (TRAINERY_RUNNER_THREADS).
    training = [e for e in events if e["message"].startswith("training on cpu")]
    assert training and training[0]["data"]["cpu_threads"] == 1

    ckpts = stack.client.get(f"/v1/jobs/{job['id']}/checkpoints").json()
    assert len(ckpts) == 2 and ckpts[-1]["epoch"] == len(rows)
    assert all(len(c["sha256"]) == 64 and c["size"] > 0 for c in ckpts)

    r = stack.client.get(f"/v1/jobs/{job['id']}/model")
    assert r.status_code == 200
    import hashlib

    assert r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'
    assert stack.client.get(f"/v1/jobs/{job['id']}/model",
                            headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    (tmp_path / "model.pt").write_bytes(r.content)
    out = plain_python(
        "import torch\n"
        "from sklearn.datasets import load_digits\n"
        "d = load_digits()\n"
        "m = torch.jit.load('model.pt')\n"
        "x = torch.tensor(d.data, dtype=torch.float32)\n"
        "print((m(x).argmax(1).numpy() == d.target).mean())\n", tmp_path)
    assert float(out) >= 0.95

    safetensors = stack.client.get(f"/v1/jobs/{job['id']}/model", params={"format": "state_dict"})
    assert safetensors.status_code == 200
    from safetensors.torch import load as load_safetensors

    state = load_safetensors(safetensors.content)
    assert "head.weight" in state and state["head.weight"].shape == (10, 64)

    card = stack.client.get(f"/v1/jobs/{job['id']}/model/card").json()
    assert card["input"]["shape"] == [None, 64] and card["output"]["shape"] == [None, 10]
    assert card["class_names"] == [str(i) for i in range(10)]
    assert card["versions"]["torch"]
    assert card["torchscript"] == {"method": "script"}  # the mlp scripts; no fall-back to trace


def test_runner_error_fails_the_job_and_the_worker_takes_the_next(stack: Stack) -> None:
    bad = stack.submit(tiny_spec(model={"layers": [{"type": "conv2d", "filters": 4}]}))
    good = stack.submit(tiny_spec())
    bad_job = stack.wait(bad["id"])
    assert bad_job["status"] == "failed"
    assert bad_job["error"]["type"] == "user_error"
    assert "conv2d" in bad_job["error"]["message"] and "image" in bad_job["error"]["message"]
    assert stack.wait(good["id"])["status"] == "succeeded"
    assert stack.client.get(f"/v1/jobs/{bad['id']}/model").status_code == 409


def test_model_download_before_success_is_409(stack: Stack) -> None:
    job = stack.submit(tiny_spec(epochs=3))
    r = stack.client.get(f"/v1/jobs/{job['id']}/model")
    assert r.status_code == 409 and r.json()["error"] == "model_not_ready"
    assert stack.client.get(f"/v1/jobs/{job['id']}/model/card").status_code == 409
    stack.wait(job["id"])


def test_readyz_checks_database_and_broker(stack: Stack) -> None:
    r = stack.client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_the_embedded_broker_runs_jobs_without_redis(tmp_path: Path) -> None:
    """The fallback `trainery up` picks when no Redis is around: kombu's SQLAlchemy transport."""
    from tests.harness import migrate

    url = f"sqlite:///{tmp_path / 'trainery.db'}"
    migrate(url)
    stack = Stack(url, tmp_path, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    try:
        stack.start_api()
        stack.start_worker("e1")
        assert stack.client.get("/readyz").json()["checks"]["broker"] == "ok"
        job = stack.submit(tiny_spec(epochs=2))
        assert stack.wait(job["id"], timeout=120)["status"] == "succeeded"
    finally:
        stack.stop()
