"""Train one job with PyTorch: data, model, loop, checkpoints, exports."""

from __future__ import annotations

import random

import numpy as np
import torch

from app.core.spec import JobSpec
from workers import dataset_cache, datasets
from workers.callbacks import standard_callbacks
from workers.modelspec import resolve
from workers.reporting import JobReporter
from workers.runners.common import StopFlag, model_card, resume_from_latest
from workers.runners.onnx_artifact import output_name, save_onnx
from workers.runners.pytorch.build import build_model
from workers.runners.pytorch.export import onnx_bytes, safetensors_bytes, torchscript_bytes
from workers.runners.pytorch.trainer import TorchTrainer, pick_device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(spec: JobSpec, reporter: JobReporter, stop: StopFlag) -> None:
    """Train spec to the end (resuming from the latest checkpoint) and store the model."""
    seed_everything(spec.training.seed)
    device = pick_device()
    data = datasets.load(spec.dataset, fetch=dataset_cache.fetcher(reporter))
    layers = resolve(spec.model, data.sample_shape)
    mean, std = datasets.input_stats(data.x_train)
    y_mean = y_std = None
    if spec.task == "regression":
        y_mean, y_std = datasets.target_stats(data.y_train)
    model = build_model(layers, data.sample_shape, data.num_outputs, mean, std, y_mean, y_std)
    callbacks, _ = standard_callbacks(spec, reporter, has_validation=len(data.x_val) > 0)
    trainer = TorchTrainer(spec, model, data, device, callbacks, stop)
    if trainer.precision_note:
        reporter.event(trainer.precision_note)
    resume_from_latest(trainer, reporter)
    reporter.event(f"training on {device} with torch {torch.__version__}: "
                   f"{len(data.x_train)} training and {len(data.x_val)} validation samples",
                   {"device": str(device), "cpu_threads": torch.get_num_threads()})
    trainer.fit()

    example = torch.from_numpy(data.x_train[:2])
    reporter.save_artifact("torchscript", torchscript_bytes(trainer.model, example),
                           "model.pt", "application/octet-stream")
    reporter.save_artifact("state_dict", safetensors_bytes(trainer.model),
                           "model.safetensors", "application/octet-stream")
    onnx_example = torch.from_numpy(data.x_train[:16])
    onnx_note = save_onnx(reporter, lambda: onnx_bytes(trainer.model, onnx_example,
                                                       output_name(spec.task)),
                          data.input_dtype, spec.task)
    reporter.set_model_card({**model_card(
        spec, data, {"torch": torch.__version__},
        "torch.jit.load(path); model(x) with x as the dataset holds it, normalisation inside"),
        **onnx_note})
