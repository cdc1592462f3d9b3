"""Keras jobs through HTTP on real processes, and their parity with PyTorch on the same spec."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.harness import Stack, plain_python
from tests.specs import design_spec

pytestmark = pytest.mark.integration

pytest.importorskip("tensorflow")

FRAMEWORKS = ("keras", "pytorch")
LOG_EVERY = 10
STEPS_PER_EPOCH = 23  # 1,438 training digits in batches of 64
METRIC_ROW = {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s"}
# Loads a downloaded model in a Python without this project and writes its
# predictions for the raw inputs in x.npy to pred.npy; {load} is the framework's part.
PREDICT = (
    "import numpy as np\n"
    "x = np.load('x.npy')\n"
    "{load}\n"
    "np.save('pred.npy', np.asarray(out))\n"
)
LOADERS = {
    "keras": ("import keras\n"
              "m = keras.models.load_model('model.keras', safe_mode=True)\n"
              "out = m.predict(x, verbose=0)"),
    "pytorch": ("import torch\n"
                "m = torch.jit.load('model.pt')\n"
                "out = m(torch.from_numpy(x)).detach().numpy()"),
}
FILENAMES = {"keras": "model.keras", "pytorch": "model.pt"}
MODULES = {"keras": "keras", "pytorch": "torch"}


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target


def download(stack: Stack, job_id: str, path: Path) -> bytes:
    r = stack.client.get(f"/v1/jobs/{job_id}/model")
    assert r.status_code == 200, r.text
    path.write_bytes(r.content)
    return r.content


def predict(stack: Stack, job_id: str, framework: str, x: np.ndarray, where: Path) -> np.ndarray:
    """The job's downloaded model's outputs for x, computed by a plain Python."""
    where.mkdir(parents=True, exist_ok=True)
    download(stack, job_id, where / FILENAMES[framework])
    np.save(where / "x.npy", x)
    plain_python(PREDICT.format(load=LOADERS[framework]), where,
                 framework_module=MODULES[framework])
    out: np.ndarray = np.load(where / "pred.npy")
    return out


def load_here(stack: Stack, job_id: str, tmp_path: Path) -> Any:
    """The job's .keras model loaded in this process, as the service would (safe mode)."""
    from workers.runners.tfkeras.export import load_keras

    download(stack, job_id, tmp_path / "model.keras")
    return load_keras(tmp_path / "model.keras")


def events(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    return stack.client.get(f"/v1/jobs/{job_id}/events").json()  # type: ignore[no-any-return]


@dataclass
class DesignRun:
    job: dict[str, Any]
    logits: np.ndarray | None  # the downloaded model's outputs on all digits, in a plain Python


@pytest.fixture(scope="module")
def design_runs(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, DesignRun]:
    """The DESIGN.md section 3 spec, trained once with each framework on this stack, logging
    every 10th optimizer step."""
    specs = {fw: design_spec(name=f"digits-{fw}", framework=fw) for fw in FRAMEWORKS}
    for spec in specs.values():
        spec["training"] = {**spec["training"], "log_every_steps": LOG_EVERY}
    ids = {fw: stack.submit(spec)["id"] for fw, spec in specs.items()}
    jobs = {fw: stack.wait(job_id, timeout=300) for fw, job_id in ids.items()}
    x, _ = _digits()
    where = tmp_path_factory.mktemp("design")
    return {fw: DesignRun(job, predict(stack, job["id"], fw, x, where / fw)
                          if job["status"] == "succeeded" else None)
            for fw, job in jobs.items()}


def test_keras_design_spec_trains_and_downloads_a_keras_model(
        stack: Stack, design_runs: dict[str, DesignRun]) -> None:
    job, logits = design_runs["keras"].job, design_runs["keras"].logits
    assert job["status"] == "succeeded", job["error"]
    assert job["framework"] == "keras" and job["attempt"] == 1
    assert job["progress"]["epochs"] == 20 and 1 <= job["progress"]["epoch"] <= 20
    assert job["best"]["monitor"] == "val_loss"

    rows = stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [r["epoch"] for r in rows] == list(range(1, job["progress"]["epoch"] + 1))
    assert all(set(r) == METRIC_ROW for r in rows)
    assert set(job["metrics"]) == METRIC_ROW - {"epoch"}
    assert rows[-1]["val_accuracy"] > 0.9 and rows[0]["loss"] > rows[-1]["loss"]
    assert rows[0]["lr"] == pytest.approx(0.001) and rows[-1]["lr"] < rows[0]["lr"]  # cosine

    states = [e["to_status"] for e in events(stack, job["id"]) if e["kind"] == "state"]
    assert states == ["queued", "running", "succeeded"]
    ckpts = stack.client.get(f"/v1/jobs/{job['id']}/checkpoints").json()
    assert len(ckpts) == 2 and ckpts[-1]["epoch"] == len(rows)

    r = stack.client.get(f"/v1/jobs/{job['id']}/model", params={"format": "keras"})
    assert r.status_code == 200
    assert r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'
    assert "model.keras" in r.headers["content-disposition"]
    assert r.content == stack.client.get(f"/v1/jobs/{job['id']}/model").content  # the default
    assert stack.client.get(f"/v1/jobs/{job['id']}/model",
                            params={"format": "torchscript"}).status_code == 422

    # Loaded by keras.models.load_model in a Python without this project, raw inputs in.
    _, y = _digits()
    assert logits is not None and logits.shape == (len(y), 10)
    assert (logits.argmax(1) == y).mean() >= 0.95

    card = stack.client.get(f"/v1/jobs/{job['id']}/model/card").json()
    assert card["framework"] == "keras"
    assert card["input"]["shape"] == [None, 64] and card["output"]["shape"] == [None, 10]
    assert card["versions"]["tensorflow"] and card["versions"]["keras"]


def test_keras_runner_never_imports_torch(stack: Stack, design_runs: dict[str, DesignRun]) -> None:
    recorded = [e["data"]["frameworks"] for e in events(stack, design_runs["keras"].job["id"])
                if (e["data"] or {}).get("frameworks") is not None]
    assert recorded == [["tensorflow"]]


def test_keras_and_pytorch_agree_on_the_design_spec(design_runs: dict[str, DesignRun]) -> None:
    for run in design_runs.values():
        assert run.job["status"] == "succeeded", run.job["error"]
    val = {fw: run.job["metrics"]["val_accuracy"] for fw, run in design_runs.items()}
    assert abs(val["keras"] - val["pytorch"]) <= 0.03, val

    _, y = _digits()
    classes = {fw: run.logits.argmax(1) for fw, run in design_runs.items()
               if run.logits is not None}
    agreement = (classes["keras"] == classes["pytorch"]).mean()
    assert agreement >= 0.95, agreement
    assert all((c == y).mean() >= 0.95 for c in classes.values())


def test_keras_regression_predicts_in_the_targets_units(stack: Stack, tmp_path: Path) -> None:
    job = stack.wait(stack.submit({
        "name": "diabetes-keras", "framework": "keras", "task": "regression",
        "dataset": {"builtin": "diabetes"}, "model": {"preset": "mlp"},
        "training": {"epochs": 6, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.01},
                     "metrics": ["mae", "mse"]},
    })["id"])
    assert job["status"] == "succeeded", job["error"]
    rows = stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert set(rows[-1]) == {"epoch", "loss", "mae", "mse", "val_loss", "val_mae", "val_mse",
                             "lr", "epoch_time_s"}
    assert rows[-1]["val_mae"] < 60  # a constant guess is ~65 off; targets' std is ~77

    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    pred = np.asarray(load_here(stack, job["id"], tmp_path)(d.data.astype(np.float32)))
    assert pred.shape == (len(d.target), 1)
    assert np.abs(pred[:, 0] - d.target).mean() < 60  # raw inputs in, raw units out


def test_keras_conv_job_on_images_with_a_precision_fallback(stack: Stack, tmp_path: Path) -> None:
    dataset = {"builtin": "synthetic", "n_samples": 600, "sample_shape": [12, 12, 1],
               "num_classes": 3, "seed": 1}
    job = stack.wait(stack.submit({
        "name": "resnet-keras", "framework": "keras", "dataset": dataset,
        "model": {"preset": "resnet8"},
        "training": {"epochs": 3, "batch_size": 32, "precision": "bf16",
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
    })["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["metrics"]["val_accuracy"] > 0.6
    notes = [e["message"] for e in events(stack, job["id"]) if e["kind"] != "state"]
    assert any("training in fp32 on the CPU" in n for n in notes), notes

    card = stack.client.get(f"/v1/jobs/{job['id']}/model/card").json()
    assert card["input"]["shape"] == [None, 12, 12, 1] and card["input"]["layout"] == "NHWC"
    from workers.datasets import synthetic

    assert card["class_names"] == ["0", "1", "2"]
    x, y = synthetic(600, [12, 12, 1], 3, seed=1)  # the job's data, NHWC as stored
    logits = np.asarray(load_here(stack, job["id"], tmp_path)(x))
    assert logits.shape == (600, 3) and (logits.argmax(1) == y).mean() > 0.6


def test_both_frameworks_log_steps_that_the_server_downsamples(
        stack: Stack, design_runs: dict[str, DesignRun]) -> None:
    for fw, run in design_runs.items():
        job = run.job
        assert job["status"] == "succeeded", job["error"]
        url = f"/v1/jobs/{job['id']}/metrics"
        epochs = stack.client.get(url).json()
        full = stack.client.get(url, params={"series": "steps", "max_points": 10_000}).json()
        assert full["steps"] == list(range(LOG_EVERY, len(epochs) * STEPS_PER_EPOCH + 1,
                                           LOG_EVERY)), fw
        assert full["bucket_steps"] == 1 and set(full["metrics"]) == {"loss", "accuracy", "lr"}
        loss, lr = full["metrics"]["loss"]["last"], full["metrics"]["lr"]["last"]
        assert loss[0] > loss[-1] and all(math.isfinite(v) for v in loss), fw
        assert lr == [pytest.approx(epochs[(s - 1) // STEPS_PER_EPOCH]["lr"])
                      for s in full["steps"]], fw

        few = stack.client.get(url, params={"series": "steps", "max_points": 5}).json()
        assert len(few["steps"]) <= 5 and few["steps"][-1] == full["steps"][-1]
        assert max(few["metrics"]["loss"]["max"]) == max(loss)
        assert min(few["metrics"]["loss"]["min"]) == min(loss)
    bad = stack.client.get(url, params={"series": "steps", "max_points": 100_000})
    assert bad.status_code == 422 and "max_points" in bad.text
    assert stack.client.get(url, params={"series": "batches"}).status_code == 422
