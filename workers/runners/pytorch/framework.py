"""The PyTorch side of a job: device and seeds, model and backend, downloads."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from app.core.spec import JobSpec
from workers.datasets import Dataset
from workers.reporting import JobReporter
from workers.runners import ModelArgs
from workers.runners.onnx_artifact import output_name, save_onnx
from workers.runners.pytorch.backend import TorchBackend, resolve_device
from workers.runners.pytorch.build import build_model
from workers.runners.pytorch.distributed import join_group
from workers.runners.pytorch.export import (
    onnx_bytes,
    preload_onnx,
    safetensors_bytes,
    torchscript_bytes,
)
from workers.training.replicas import Replicas

INPUT_NOTE = "torch.jit.load(path); model(x) with x as the dataset holds it, normalisation inside"


def versions() -> dict[str, str]:
    return {"torch": torch.__version__}


def out_of_memory(exc: BaseException) -> bool:
    """A CUDA allocation failed (OutOfMemoryError), or a CPU one (c10's allocator raises a
    plain RuntimeError with this text when malloc fails, e.g. at the runner's data limit)."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def setup(spec: JobSpec, device: str, replicas: Replicas) -> tuple[torch.device, Replicas]:
    """Seed Python, NumPy and torch (every rank alike: the same initial weights); the torch
    device for the verified one, after joining the job's process group when it has one."""
    random.seed(spec.training.seed)
    np.random.seed(spec.training.seed)
    torch.manual_seed(spec.training.seed)
    resolved = resolve_device(device)
    join_group(replicas, resolved)
    return resolved, replicas


def warm_up() -> None:
    """A throwaway optimizer step on the CPU, in a spare before its job: the first
    optimizer imports torch._dynamo (seconds). The job reseeds every generator first.
    And the ONNX exporter's package (export.preload_onnx): every job ends with an
    export, which imported it."""
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(layer.parameters())
    layer(torch.zeros(1, 2)).sum().backward()
    optimizer.step()
    preload_onnx()


def make_backend(spec: JobSpec, data: Dataset, model_args: ModelArgs,
                 place: tuple[torch.device, Replicas]) -> TorchBackend:
    """The model for model_args, on the device, in a (data-parallel) backend."""
    device, replicas = place
    return TorchBackend(spec, build_model(*model_args), data, device, replicas=replicas)


def export(spec: JobSpec, data: Dataset, backend: TorchBackend, model_args: ModelArgs,
           reporter: JobReporter, onnx_fault: bool) -> dict[str, Any]:
    """TorchScript, safetensors and ONNX; the model card's notes on them."""
    model = backend.model
    script, script_error = torchscript_bytes(model, torch.from_numpy(data.x_train[:2]))
    if script_error:
        reporter.event(f"torchscript: scripting failed, traced instead: {script_error}",
                       {"format": "torchscript", "script_error": script_error})
    reporter.save_artifact("torchscript", script, "model.pt", "application/octet-stream")
    reporter.save_artifact("state_dict", safetensors_bytes(model), "model.safetensors",
                           "application/octet-stream")
    onnx_example = torch.from_numpy(data.x_train[:16])
    onnx_note = save_onnx(reporter, lambda: onnx_bytes(model, onnx_example, output_name(spec.task)),
                          data.input_dtype, spec.task, fail=onnx_fault)
    how = ({"method": "trace", "script_error": script_error} if script_error
           else {"method": "script"})
    return {"torchscript": how, **onnx_note}
