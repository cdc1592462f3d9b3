"""GPU smoke test: a bf16 PyTorch job trained on CUDA through a real API and worker.

Skipped unless torch sees a CUDA device, so CI on CPU never needs one;
scripts/gpu_check.sh runs it (then the benchmarks) on a machine with an NVIDIA GPU.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.harness import Stack, migrate  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.integration,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# The airbench preset on CIFAR-sized synthetic images: convolutions (channels-last on
# CUDA), batchnorm and GELU under bf16 autocast, a minute or less on any recent GPU.
SPEC: dict[str, Any] = {
    "name": "gpu-smoke", "framework": "pytorch",
    "dataset": {"builtin": "synthetic", "n_samples": 6000, "sample_shape": [32, 32, 3],
                "num_classes": 10, "validation_split": 0.2, "seed": 7},
    "model": {"preset": "airbench"},
    "training": {"epochs": 4, "batch_size": 256, "precision": "bf16",
                 "optimizer": {"name": "adam", "lr": 0.002}},
    "resources": {"gpus": 1, "max_runtime_s": 900},
}
MIN_ACCURACY = 0.9


def train_and_check(stack: Stack, spec: dict[str, Any], device: str) -> None:
    """Train spec through the stack; check the events, the metrics and the downloaded model."""
    from app.core.spec import DatasetSpec
    from workers import datasets

    job = stack.wait(stack.submit(spec)["id"], timeout=900)
    events = stack.client.get(f"/v1/jobs/{job['id']}/events").json()
    messages = [e["message"] for e in events]
    assert job["status"] == "succeeded", (job["error"], messages[-10:])
    assert any(m.startswith(f"training on {device}") for m in messages), messages
    bf16 = device == "cpu" or torch.cuda.is_bf16_supported()
    assert any("bf16 is not supported" in m for m in messages) != bf16, messages
    assert job["metrics"]["val_accuracy"] >= MIN_ACCURACY, job["metrics"]

    r = stack.client.get(f"/v1/jobs/{job['id']}/model", params={"format": "torchscript"})
    assert r.status_code == 200, r.text
    model = torch.jit.load(io.BytesIO(r.content), map_location="cpu").eval()
    data = datasets.load(DatasetSpec.model_validate(spec["dataset"]))
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x_val))  # raw NHWC float32, as the dataset holds it
    accuracy = float((logits.argmax(1).numpy() == data.y_val).mean())
    assert accuracy >= MIN_ACCURACY
    # The downloaded float32 model agrees with what the job measured under bf16.
    assert abs(accuracy - job["metrics"]["val_accuracy"]) <= 0.02
    assert np.isfinite(logits.numpy()).all()


def test_bf16_job_trains_on_the_gpu_and_its_model_loads_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'trainery.db'}"
    migrate(url)
    stack = Stack(url, tmp_path)
    try:
        stack.start_api()
        # Pinned as the fleet pins a GPU worker: the one GPU it owns, before anything starts.
        stack.start_worker("gpu0", queues=("gpu",), env={"CUDA_VISIBLE_DEVICES": "0"})
        train_and_check(stack, SPEC, "cuda")
    finally:
        stack.stop()
