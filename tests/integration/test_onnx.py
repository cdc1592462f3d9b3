"""ONNX exports of real jobs: onnxruntime reproduces the TorchScript and .keras models to 1e-4."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.dataset_files import blobs, image_zip, npz_bytes, shape_images
from tests.harness import Stack, plain_python

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("stack", ["sqlite"], indirect=True)]

TOLERANCE = 1e-4
CONV = {"layers": [{"type": "conv2d", "filters": 6, "kernel_size": 3, "activation": "relu"},
                   {"type": "batchnorm"}, {"type": "avgpool2d", "padding": "same"},
                   {"type": "flatten"}, {"type": "dense", "units": 16, "activation": "gelu"},
                   {"type": "dropout", "rate": 0.2}]}
# Runs in a Python without this project: the model in its own format and the ONNX graph in
# onnxruntime on the same inputs (all at once, and one sample at a time: the batch axis is free).
COMPARE = """
import json, numpy as np, onnxruntime
{load}
x = np.load("x.npy")
session = onnxruntime.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
[inp], [out] = session.get_inputs(), session.get_outputs()
got = session.run(None, {{inp.name: x}})[0]
single = session.run(None, {{inp.name: x[:1]}})[0]
expected = predict(x)
print(json.dumps({{"input": inp.name, "dtype": inp.type, "batch": inp.shape[0], "output": out.name,
                  "diff": float(np.abs(got - expected).max()),
                  "single_diff": float(np.abs(single - expected[:1]).max()),
                  "scale": float(np.abs(expected).max())}}))
"""
LOADERS = {
    "pytorch": ("model.pt", "torch", (
        "import torch\n"
        "m = torch.jit.load('model.pt')\n"
        "predict = lambda x: m(torch.from_numpy(x)).detach().numpy()\n")),
    "keras": ("model.keras", "keras", (
        "import keras\n"
        "m = keras.models.load_model('model.keras', safe_mode=True)\n"
        "predict = lambda x: np.asarray(m(x.astype('float32'), training=False))\n")),
}


def uploaded(client: httpx.Client, filename: str, payload: bytes) -> str:
    r = client.post("/v1/datasets", files={"file": (filename, payload)})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def spec(framework: str, ds_id: str, name: str, model: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "framework": framework, "dataset": {"id": ds_id}, "model": model,
            "training": {"epochs": 2, "batch_size": 16, "optimizer": {"name": "adam", "lr": 0.01}}}


class Exports:
    """Jobs whose ONNX exports the tests check, submitted together so the worker stays busy."""

    def __init__(self, stack: Stack) -> None:
        ix, iy = shape_images(12, size=12, seed=51)
        self.images, _ = shape_images(4, size=12, seed=52)
        x, y = blobs(120, seed=53)
        self.vectors = blobs(30, seed=54)[0]
        image_id = uploaded(stack.client, "onnx-shapes.zip", image_zip(ix, iy))
        vector_id = uploaded(stack.client, "onnx-blobs.npz", npz_bytes(x=x, y=y))
        mlp = {"layers": [{"type": "dense", "units": 32, "activation": "relu"},
                          {"type": "batchnorm"}, {"type": "dropout", "rate": 0.1}]}
        self.jobs = {
            ("pytorch", "images"): stack.submit(spec("pytorch", image_id, "onnx-pt-img", CONV)),
            ("pytorch", "vectors"): stack.submit(spec("pytorch", vector_id, "onnx-pt-vec", mlp)),
            ("keras", "images"): stack.submit(spec("keras", image_id, "onnx-keras-img", CONV)),
        }


@pytest.fixture(scope="module")
def exports(stack: Stack) -> Exports:
    return Exports(stack)


def compare(stack: Stack, job_id: str, framework: str, x: np.ndarray,
            where: Path) -> dict[str, Any]:
    job = stack.wait(job_id, timeout=300)
    assert job["status"] == "succeeded", job["error"]
    filename, module, load = LOADERS[framework]
    for fmt, name in ((None, filename), ("onnx", "model.onnx")):
        r = stack.client.get(f"/v1/jobs/{job_id}/model", params={"format": fmt} if fmt else {})
        assert r.status_code == 200, r.text
        (where / name).write_bytes(r.content)
    np.save(where / "x.npy", x)
    out = plain_python(COMPARE.format(load=load), where, module)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("data", ["images", "vectors"])
def test_pytorch_onnx_matches_torchscript(stack: Stack, exports: Exports, data: str,
                                          tmp_path: Path) -> None:
    x = exports.images if data == "images" else exports.vectors
    job_id = exports.jobs[("pytorch", data)]["id"]
    result = compare(stack, job_id, "pytorch", x, tmp_path)
    assert result["diff"] <= TOLERANCE and result["single_diff"] <= TOLERANCE, result
    assert result["scale"] > 0.1  # a real comparison, not of zeros
    assert (result["input"], result["output"], result["batch"]) == ("inputs", "logits", "batch")
    # Inputs exactly as the upload holds them: the images' uint8 pixels, or float32 features.
    assert result["dtype"] == ("tensor(uint8)" if data == "images" else "tensor(float)")
    card = stack.client.get(f"/v1/jobs/{job_id}/model/card").json()
    assert card["onnx"]["input"]["dtype"] == str(x.dtype)


def test_keras_onnx_matches_the_keras_model(stack: Stack, exports: Exports,
                                            tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow is not installed")
    job_id = exports.jobs[("keras", "images")]["id"]
    result = compare(stack, job_id, "keras", exports.images, tmp_path)
    assert result["diff"] <= TOLERANCE and result["single_diff"] <= TOLERANCE, result
    assert result["scale"] > 0.1
    assert (result["input"], result["output"], result["dtype"]) == (
        "inputs", "logits", "tensor(uint8)")


def test_a_failed_onnx_export_leaves_the_job_succeeded_and_says_why(stack: Stack) -> None:
    # A worker of its own whose exporter is made to fail for this one job name.
    queue = "onnx-fault"
    stack.start_worker("w-onnx", queues=(queue,),
                       env={"TRAINERY_FAULT_INJECTION": "onnx_fail@0/no-onnx"})
    try:
        x, y = blobs(60, seed=55)
        ds_id = uploaded(stack.client, "no-onnx.npz", npz_bytes(x=x, y=y))
        job = stack.submit({**spec("pytorch", ds_id, "no-onnx", {"preset": "mlp"}),
                            "resources": {"queue": queue}})
        done = stack.wait(job["id"])
    finally:
        stack.stop_worker("w-onnx")
    assert done["status"] == "succeeded", done["error"]
    r = stack.client.get(f"/v1/jobs/{job['id']}/model", params={"format": "onnx"})
    assert r.status_code == 404 and r.json()["error"] == "export_unavailable"
    assert "injected fault: onnx_fail" in r.json()["detail"]
    events = stack.client.get(f"/v1/jobs/{job['id']}/events").json()
    assert any(e["message"].startswith("onnx export unavailable") for e in events)
    card = stack.client.get(f"/v1/jobs/{job['id']}/model/card").json()
    assert "injected fault" in card["unavailable_formats"]["onnx"]
    assert stack.client.get(f"/v1/jobs/{job['id']}/model").status_code == 200
