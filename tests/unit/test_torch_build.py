"""Spec -> PyTorch model: every layer type and preset, shapes, and exact resume."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from app.core.estimate import param_count
from app.core.modelspec import resolve, same_padding
from app.core.spec import JobSpec, ModelSpec
from workers.callbacks import BestTracker, Callback, CallbackList, Logs, Trainer
from workers.datasets import Dataset, input_stats, synthetic
from workers.errors import UserError
from workers.runners.common import StopRequested
from workers.runners.pytorch.backend import TorchBackend
from workers.runners.pytorch.build import build_model
from workers.runners.pytorch.export import torchscript_bytes
from workers.training.loop import TrainingLoop

LAYERS: list[dict[str, Any]] = [
    {"type": "conv2d", "filters": 4, "kernel_size": 3, "strides": 2, "padding": "same",
     "activation": "relu"},
    {"type": "batchnorm", "momentum": 0.9},
    {"type": "residual", "filters": 8, "strides": 2},
    {"type": "maxpool2d", "pool_size": 2, "padding": "same"},
    {"type": "conv2d", "filters": 6, "kernel_size": [2, 3], "padding": "valid"},
    {"type": "activation", "activation": "gelu"},
    {"type": "avgpool2d", "pool_size": 1},
    {"type": "dropout", "rate": 0.2},
    {"type": "flatten"},
    {"type": "dense", "units": 7, "activation": "leaky_relu"},
    {"type": "batchnorm"},
]


def model_for(layers: list[dict[str, Any]] | None, shape: tuple[int, ...], outputs: int = 3,
              preset: str | None = None) -> torch.nn.Module:
    spec = ModelSpec.model_validate({"layers": layers} if layers else {"preset": preset})
    resolved = resolve(spec, shape)
    x = np.zeros((4, *shape), np.float32)
    mean, std = input_stats(x + np.arange(4).reshape(4, *([1] * len(shape))))
    return build_model(resolved, shape, outputs, mean, std)


def test_every_layer_type_builds_with_the_shapes_modelspec_predicts() -> None:
    shape = (25, 23, 3)
    resolved = resolve(ModelSpec.model_validate({"layers": LAYERS}), shape)
    model = model_for(LAYERS, shape).eval()
    x = torch.rand(2, *shape)
    # Walk the body and compare each layer's output shape (NCHW) with the prediction (NHWC).
    h = (x - model.in_mean) / model.in_std
    h = h.permute(0, 3, 1, 2)
    for layer, r in zip(model.body, resolved, strict=True):
        h = layer(h)
        expected = r.output_shape if len(r.output_shape) == 1 else (
            r.output_shape[2], r.output_shape[0], r.output_shape[1])
        assert tuple(h.shape[1:]) == expected, (r.spec.type, h.shape, r.output_shape)
    assert model(x).shape == (2, 3)


@pytest.mark.parametrize(("preset", "shape"), [
    ("mlp", (64,)), ("mlp", (8, 8, 1)), ("lenet5", (28, 28, 1)), ("resnet8", (32, 32, 3)),
    ("airbench", (32, 32, 3)), ("airbench", (13, 11, 3)),
])
def test_presets(preset: str, shape: tuple[int, ...]) -> None:
    model = model_for(None, shape, 10, preset=preset)
    assert model(torch.rand(3, *shape)).shape == (3, 10)


@pytest.mark.parametrize(("layers", "preset", "shape", "outputs"), [
    (LAYERS, None, (25, 23, 3), 3),
    ([{"type": "dense", "units": 9, "use_bias": False}, {"type": "batchnorm"},
      {"type": "dense", "units": 5}], None, (6,), 1),
    ([{"type": "residual", "filters": 3}, {"type": "residual", "filters": 3, "strides": 2},
      {"type": "conv2d", "filters": 2, "kernel_size": [1, 3], "use_bias": False},
      {"type": "flatten"}], None, (5, 5, 3), 2),
    (None, "mlp", (64,), 10), (None, "mlp", (8, 8, 1), 4), (None, "lenet5", (28, 28, 1), 10),
    (None, "resnet8", (16, 16, 3), 10), (None, "airbench", (16, 16, 3), 10),
])
def test_the_submit_estimate_counts_exactly_the_built_parameters(
        layers: list[dict[str, Any]] | None, preset: str | None, shape: tuple[int, ...],
        outputs: int) -> None:
    spec = ModelSpec.model_validate({"layers": layers} if layers else {"preset": preset})
    model = model_for(layers, shape, outputs, preset)
    built = sum(p.numel() for p in model.parameters())
    assert param_count(resolve(spec, shape), shape, outputs) == built


def test_uint8_images_are_accepted_as_stored() -> None:
    model = model_for(None, (8, 8, 1), 2, preset="mlp").eval()
    x = torch.randint(0, 255, (2, 8, 8, 1), dtype=torch.uint8)
    assert torch.allclose(model(x), model(x.float()))


@pytest.mark.parametrize(("layers", "shape", "words"), [
    ([{"type": "conv2d", "filters": 2}], (64,), "needs image input"),
    ([{"type": "dense", "units": 2}], (8, 8, 1), "add a flatten"),
    ([{"type": "conv2d", "filters": 2, "kernel_size": 9, "padding": "valid"}], (8, 8, 1),
     "does not fit"),
    ([{"type": "conv2d", "filters": 2}], (8, 8, 1), "image-shaped output"),
])
def test_shape_errors_are_user_errors(layers: list[dict[str, Any]], shape: tuple[int, ...],
                                      words: str) -> None:
    with pytest.raises(UserError, match=words):
        resolve(ModelSpec.model_validate({"layers": layers}), shape)


def test_same_padding_matches_tensorflow() -> None:
    assert same_padding(8, 3, 2) == (0, 1)  # TF puts the odd pixel after
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(5, 1, 1) == (0, 0)


def _dataset() -> Dataset:
    x, y = synthetic(300, [6], 3, seed=0)
    return Dataset("synthetic", "classification", x[:240], y[:240], x[240:], y[240:],
                   ["a", "b", "c"])


class StopAfter(Callback):
    """Ends training after `epoch` epochs, as a killed worker would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        trainer.stop_training = epoch == self.epoch


def _trainer(spec: JobSpec, data: Dataset, stop_after: int = 0,
             data_budget_bytes: int | None = None) -> TrainingLoop:
    torch.manual_seed(0)
    layers = resolve(spec.model, data.sample_shape)
    mean, std = input_stats(data.x_train)
    model = build_model(layers, data.sample_shape, 3, mean, std)
    callbacks = CallbackList([BestTracker("val_loss", "min"), StopAfter(stop_after)])
    backend = TorchBackend(spec, model, data, torch.device("cpu"),
                           data_budget_bytes=data_budget_bytes)
    return TrainingLoop(spec, backend, callbacks)


def weights(loop: TrainingLoop) -> list[torch.Tensor]:
    return list(loop.backend.model.state_dict().values())  # type: ignore[attr-defined]


def test_resume_from_a_checkpoint_continues_exactly() -> None:
    spec = JobSpec.model_validate({
        "framework": "pytorch", "dataset": {"builtin": "synthetic", "n_samples": 300,
                                            "sample_shape": [6], "num_classes": 3},
        "model": {"layers": [{"type": "dense", "units": 16, "activation": "relu"},
                             {"type": "dropout", "rate": 0.3}]},
        "training": {"epochs": 4, "batch_size": 32, "lr_schedule": {"name": "cosine"},
                     "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
    })
    data = _dataset()
    straight = _trainer(spec, data)
    straight.fit()

    first = _trainer(spec, data, stop_after=2)
    first.fit()
    payload = first.checkpoint_bytes(2)
    torch.manual_seed(123)  # the resumed process starts from other RNG state
    resumed = _trainer(spec, data)
    assert resumed.load_checkpoint(payload) == 2
    resumed.fit()
    for a, b in zip(weights(straight), weights(resumed), strict=True):
        assert torch.equal(a, b)


def test_data_over_the_device_budget_is_streamed_from_the_host_with_the_same_result() -> None:
    spec = JobSpec.model_validate({
        "framework": "pytorch", "dataset": {"builtin": "synthetic", "n_samples": 300,
                                            "sample_shape": [6], "num_classes": 3},
        "model": {"layers": [{"type": "dense", "units": 16, "activation": "relu"}]},
        "training": {"epochs": 2, "batch_size": 32},
    })
    data = _dataset()
    on_device, streamed = _trainer(spec, data), _trainer(spec, data, data_budget_bytes=0)
    assert on_device.backend.data_on_device and not streamed.backend.data_on_device
    logs = [{k: v for k, v in t.fit().items() if k != "epoch_time_s"}
            for t in (on_device, streamed)]
    assert logs[0] == logs[1]
    for a, b in zip(weights(on_device), weights(streamed), strict=True):
        assert torch.equal(a, b)


class StopAtBatch(Callback):
    """Asks training to stop after `batch` (0-based) of 1-based `epoch`, as SIGTERM would."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch, self.current = epoch, batch, 0
        self.payload = b""

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        self.current = epoch

    def on_batch_end(self, trainer: Trainer, batch: int) -> None:
        if (self.current, batch) == (self.epoch, self.batch):
            trainer.stop.set("SIGTERM")  # type: ignore[attr-defined]

    def on_interrupt(self, trainer: Trainer, epoch: int, batch: int) -> None:
        self.payload = trainer.checkpoint_bytes(epoch)


def test_a_stop_mid_epoch_checkpoints_and_resumes_at_that_batch() -> None:
    spec = JobSpec.model_validate({
        "framework": "pytorch", "dataset": {"builtin": "synthetic", "n_samples": 300,
                                            "sample_shape": [6], "num_classes": 3},
        "model": {"layers": [{"type": "dense", "units": 16, "activation": "relu"},
                             {"type": "dropout", "rate": 0.3}]},
        "training": {"epochs": 4, "batch_size": 32, "lr_schedule": {"name": "cosine"}},
    })
    data = _dataset()
    straight = _trainer(spec, data)
    straight_logs = straight.fit()

    stopped = _trainer(spec, data)
    stopper = StopAtBatch(epoch=3, batch=4)
    stopped.callbacks.callbacks.append(stopper)  # type: ignore[attr-defined]
    with pytest.raises(StopRequested):
        stopped.fit()
    torch.manual_seed(99)
    resumed = _trainer(spec, data)
    assert resumed.load_checkpoint(stopper.payload) == 2 and resumed.resume_batch == 5
    resumed_logs = resumed.fit()
    for a, b in zip(weights(straight), weights(resumed), strict=True):
        assert torch.equal(a, b)
    assert resumed_logs["loss"] == straight_logs["loss"]


class Unscriptable(nn.Module):
    """A forward TorchScript cannot compile (a generator expression), which tracing handles."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + sum(x[:, i:i + 1] for i in range(3))


def test_torchscript_says_why_scripting_failed_when_it_falls_back_to_tracing() -> None:
    model, x = Unscriptable(), torch.ones(2, 3)
    payload, script_error = torchscript_bytes(model, x)
    assert script_error  # the reason the job's events and model card carry
    loaded = torch.jit.load(io.BytesIO(payload))
    assert torch.allclose(loaded(x), model(x))
    _, none = torchscript_bytes(nn.Linear(3, 2), x)
    assert none == ""
