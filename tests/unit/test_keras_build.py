"""The Keras runner's parts in one process: every layer and preset, checkpoints and resume."""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import workers.runners.tfkeras  # noqa: E402,F401  fixes Keras's backend before keras loads

pytest.importorskip("tensorflow")

import keras  # noqa: E402

from app.core.estimate import param_count  # noqa: E402
from app.core.modelspec import ResolvedLayer, resolve  # noqa: E402
from app.core.spec import JobSpec, ModelSpec  # noqa: E402
from workers import datasets  # noqa: E402
from workers.callbacks import Callback, standard_callbacks  # noqa: E402
from workers.runners.common import StopRequested  # noqa: E402
from workers.runners.tfkeras.backend import KerasBackend, dtype_policy_for  # noqa: E402
from workers.runners.tfkeras.build import apply_layer, build_model  # noqa: E402
from workers.runners.tfkeras.export import keras_bytes, load_keras  # noqa: E402
from workers.training.loop import TrainingLoop  # noqa: E402

# Every layer type on odd-sized images, so 'same' padding with stride 2 is asymmetric.
IMAGE_LAYERS: list[dict[str, Any]] = [
    {"type": "conv2d", "filters": 4, "kernel_size": 3, "strides": 2, "activation": "relu"},
    {"type": "conv2d", "filters": 5, "kernel_size": [3, 2], "padding": "valid",
     "activation": "leaky_relu", "use_bias": False},
    {"type": "batchnorm", "momentum": 0.8, "epsilon": 1e-3},
    {"type": "maxpool2d", "pool_size": 3, "strides": 1, "padding": "same"},
    {"type": "avgpool2d", "pool_size": [2, 1], "padding": "same"},
    {"type": "residual", "filters": 8, "strides": 2, "activation": "elu"},
    {"type": "residual", "filters": 8},
    {"type": "activation", "activation": "gelu"},
    {"type": "dropout", "rate": 0.3},
    {"type": "flatten"},
    {"type": "dense", "units": 7, "activation": "tanh"},
    {"type": "batchnorm"},
    {"type": "dense", "units": 6, "activation": "silu", "use_bias": False},
]
POOLED_LAYERS: list[dict[str, Any]] = [
    {"type": "conv2d", "filters": 3, "kernel_size": 5, "activation": "selu"},
    {"type": "avgpool2d"},
    {"type": "global_avgpool"},
    {"type": "dense", "units": 4, "activation": "softplus"},
    {"type": "activation", "activation": "sigmoid"},
]


class FakeReporter:
    """Collects what the shared callbacks would write to SQL."""

    def __init__(self) -> None:
        self.epochs: list[tuple[int, dict[str, float]]] = []
        self.checkpoints: dict[int, bytes] = {}
        self.events: list[str] = []
        self.steps: list[tuple[int, dict[str, float]]] = []

    def record_epoch(self, epoch: int, epochs: int, logs: dict[str, float], best: Any, *,
                     checkpoint: bytes | None = None, keep_last: int = 1,
                     steps: Sequence[tuple[int, dict[str, float]]] = ()) -> None:
        self.epochs.append((epoch, dict(logs)))
        self.steps.extend(steps)
        if checkpoint is not None:
            self.checkpoints[epoch] = checkpoint

    def record_steps(self, steps: Sequence[tuple[int, dict[str, float]]]) -> None:
        self.steps.extend(steps)

    def save_checkpoint(self, epoch: int, payload: bytes, metrics: dict[str, float], *,
                        keep_last: int) -> None:
        self.checkpoints[epoch] = payload

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        self.events.append(message)

    def flush(self) -> None:
        """Nothing is written behind (the recorder calls this when an epoch's writes lag)."""


def _resolved(layers: list[dict[str, Any]] | None, shape: tuple[int, ...],
              preset: str | None = None) -> list[ResolvedLayer]:
    spec = ModelSpec.model_validate({"layers": layers} if layers else {"preset": preset})
    return resolve(spec, shape)


def _model(layers: list[ResolvedLayer], shape: tuple[int, ...], outputs: int,
           policy: str = "float32", **targets: np.ndarray) -> keras.Model:
    mean = np.zeros(shape[-1:], np.float32)
    return build_model(layers, shape, outputs, mean, np.ones_like(mean), policy=policy, **targets)


@pytest.mark.parametrize(("layers", "shape"), [(IMAGE_LAYERS, (13, 11, 3)),
                                                (POOLED_LAYERS, (9, 9, 2))])
def test_every_layer_type_has_the_shapes_modelspec_infers(layers: list[dict[str, Any]],
                                                          shape: tuple[int, ...]) -> None:
    resolved = _resolved(layers, shape)
    for r in resolved:
        out = apply_layer(keras.Input(shape=r.input_shape), r)
        assert tuple(out.shape[1:]) == r.output_shape, r.spec
    model = _model(resolved, shape, 3)
    assert model(np.zeros((2, *shape), np.float32)).shape == (2, 3)


@pytest.mark.parametrize(("preset", "shape"), [("mlp", (64,)), ("mlp", (8, 8, 1)),
                                                ("lenet5", (12, 12, 1)), ("resnet8", (12, 12, 3)),
                                                ("airbench", (12, 12, 3))])
def test_presets_build_with_shapes_from_modelspec(preset: str, shape: tuple[int, ...]) -> None:
    resolved = _resolved(None, shape, preset)
    x = keras.Input(shape=shape)
    for r in resolved:
        x = apply_layer(x, r)
        assert tuple(x.shape[1:]) == r.output_shape
    model = _model(resolved, shape, 10)
    assert model.predict(np.zeros((3, *shape), np.float32), verbose=0).shape == (3, 10)


@pytest.mark.parametrize(("layers", "preset", "shape"), [
    (IMAGE_LAYERS, None, (13, 11, 3)), (POOLED_LAYERS, None, (9, 9, 2)),
    (None, "lenet5", (12, 12, 1)), (None, "resnet8", (12, 12, 3))])
def test_the_submit_estimate_counts_exactly_the_trainable_weights(
        layers: list[dict[str, Any]] | None, preset: str | None, shape: tuple[int, ...]) -> None:
    resolved = _resolved(layers, shape, preset)
    model = _model(resolved, shape, 3)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert param_count(resolved, shape, 3) == trainable


def test_the_spec_means_what_docs_frameworks_md_says() -> None:
    resolved = _resolved([{"type": "dense", "units": 4, "activation": "leaky_relu"},
                          {"type": "batchnorm", "momentum": 0.8, "epsilon": 1e-3}], (5,))
    model = _model(resolved, (5,), 2)
    assert model.get_layer("l0_dense_leaky_relu").negative_slope == pytest.approx(0.2)
    bn = model.get_layer("l1_batchnorm")
    assert (bn.momentum, bn.epsilon) == (0.8, 1e-3)
    dense = model.get_layer("l0_dense")
    assert dense.kernel_initializer.__class__.__name__ == "GlorotUniform"
    assert not np.asarray(dense.bias).any()


def test_normalisation_and_target_scaling_live_inside_the_model(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(5.0, 3.0, size=(40, 4)).astype(np.float32)
    mean, std = datasets.input_stats(x)
    resolved = _resolved([{"type": "dense", "units": 3}], (4,))
    y_mean, y_std = np.array([100.0, -2.0], np.float32), np.array([50.0, 0.5], np.float32)
    model = build_model(resolved, (4,), 2, mean, std, y_mean, y_std)
    normalised = keras.Model(model.input, model.get_layer("normalize").output)(x)
    np.testing.assert_allclose(np.asarray(normalised), (x - mean) / std, rtol=1e-4, atol=1e-4)
    head = keras.Model(model.input, model.get_layer("head").output)(x)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(head) * y_std + y_mean,
                               rtol=1e-5, atol=1e-4)
    # The .keras file holds only built-in layers: it loads in safe mode and agrees.
    path = tmp_path / "model.keras"
    path.write_bytes(keras_bytes(model, x[:4]))
    np.testing.assert_allclose(np.asarray(load_keras(path)(x)), np.asarray(model(x)), rtol=1e-6)


def test_mixed_precision_keeps_the_output_layer_float32() -> None:
    resolved = _resolved([{"type": "dense", "units": 8, "activation": "relu"}], (4,))
    model = _model(resolved, (4,), 3, policy="mixed_bfloat16")
    assert model.get_layer("l0_dense").compute_dtype == "bfloat16"
    assert model.get_layer("head").compute_dtype == "float32"
    assert model.get_layer("normalize").compute_dtype == "float32"
    assert keras.mixed_precision.dtype_policy().name == "float32"  # the policy did not leak
    assert dtype_policy_for("bf16", None)[0] == "float32"
    assert "fp32 on the CPU" in dtype_policy_for("fp16", None)[1]


def test_same_weights_give_the_same_outputs_in_both_frameworks() -> None:
    """One layer list means one function: padding, pooling and flatten order agree with PyTorch."""
    torch = pytest.importorskip("torch")
    from workers.runners.pytorch.build import build_model as build_torch

    shape = (13, 11, 3)
    layers = [copy.deepcopy(layer) for layer in IMAGE_LAYERS if layer["type"] != "dropout"]
    resolved = _resolved(layers, shape)
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype(np.float32)
    mean, std = datasets.input_stats(x)
    k_model = build_model(resolved, shape, 5, mean, std)
    t_model = build_torch(resolved, shape, 5, mean, std).eval()

    def order(layer: keras.layers.Layer) -> tuple[float, int]:
        match = re.match(r"l(\d+)_", layer.name)
        parts = ("conv1", "conv2", "proj")
        return (int(match.group(1)) if match else float("inf"),
                next((i for i, p in enumerate(parts) if layer.name.endswith(p)), 0))

    k_layers = sorted((la for la in k_model.layers
                       if isinstance(la, (keras.layers.Dense, keras.layers.Conv2D))), key=order)
    t_layers = [m for m in t_model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert len(k_layers) == len(t_layers)
    with torch.no_grad():
        for k, t in zip(k_layers, t_layers, strict=True):
            kernel = np.asarray(k.kernel)
            t.weight.copy_(torch.from_numpy(kernel.T if kernel.ndim == 2
                                            else kernel.transpose(3, 2, 0, 1).copy()))
            if t.bias is not None:
                t.bias.copy_(torch.from_numpy(np.asarray(k.bias)))
        expected = t_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(k_model(x)), expected, rtol=1e-4, atol=1e-4)


def _trainer(spec: JobSpec, init_seed: int,
             policy: str = "float32") -> tuple[TrainingLoop, FakeReporter]:
    keras.utils.set_random_seed(init_seed)
    data = datasets.load(spec.dataset)
    resolved = resolve(spec.model, data.sample_shape)
    mean, std = datasets.input_stats(data.x_train)
    model = build_model(resolved, data.sample_shape, data.num_outputs, mean, std, policy=policy)
    reporter = FakeReporter()
    callbacks, _ = standard_callbacks(spec, reporter, has_validation=True)  # type: ignore[arg-type]
    return TrainingLoop(spec, KerasBackend(spec, model, data, policy), callbacks), reporter


def variables(loop: TrainingLoop, part: str = "model") -> list[Any]:
    return list(getattr(loop.backend, part).variables)


RESUME_SPEC: dict[str, Any] = {
    "framework": "keras",
    "dataset": {"builtin": "iris"},
    "model": {"layers": [{"type": "dense", "units": 16, "activation": "relu"},
                         {"type": "batchnorm"},
                         {"type": "dropout", "rate": 0.3},
                         {"type": "dense", "units": 8, "activation": "tanh"}]},
    "training": {"epochs": 4, "batch_size": 16,
                 "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
                               "weight_decay": 1e-3},
                 "lr_schedule": {"name": "cosine", "warmup_epochs": 1},
                 "early_stopping": {"monitor": "val_accuracy", "patience": 10}},
}


def test_checkpoint_round_trips_and_resume_continues_identically() -> None:
    spec = JobSpec.model_validate(RESUME_SPEC)
    straight, straight_reports = _trainer(spec, init_seed=0)
    straight.fit()
    payload = straight_reports.checkpoints[2]
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:  # no pickle inside
        assert "meta" in npz.files

    resumed, resumed_reports = _trainer(spec, init_seed=123)  # other weights and dropout seeds
    assert resumed.load_checkpoint(payload) == 2
    resumed.fit()

    def series(reports: FakeReporter) -> list[tuple[int, dict[str, float]]]:
        return [(e, {k: v for k, v in logs.items() if k != "epoch_time_s"})
                for e, logs in reports.epochs if e > 2]

    assert [e for e, _ in resumed_reports.epochs] == [3, 4]
    assert series(resumed_reports) == series(straight_reports)
    for a, b in zip(variables(straight), variables(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(variables(straight, "optimizer"), variables(resumed, "optimizer"),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    stopped = [t.callbacks.callbacks[1].state() for t in (straight, resumed)]  # type: ignore[attr-defined]
    assert stopped[0]["wait"] == stopped[1]["wait"]
    assert stopped[0]["best"]["epoch"] == stopped[1]["best"]["epoch"]
    assert stopped[0]["best"]["value"] == stopped[1]["best"]["value"]


@pytest.mark.parametrize("optimizer", [
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    {"name": "adam", "lr": 0.01, "weight_decay": 1e-4},
    {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
    {"name": "rmsprop", "lr": 0.01, "momentum": 0.5},
])
def test_every_optimizer_and_schedule_trains(optimizer: dict[str, Any]) -> None:
    schedule = {"sgd": {"name": "step", "step_size": 1, "gamma": 0.5},
                "adam": {"name": "cosine", "warmup_epochs": 1},
                "adamw": {"name": "constant"}, "rmsprop": {"name": "cosine"}}[optimizer["name"]]
    spec = JobSpec.model_validate({**RESUME_SPEC, "training": {
        "epochs": 2, "batch_size": 32, "optimizer": optimizer, "lr_schedule": schedule}})
    trainer, reports = _trainer(spec, init_seed=0)
    logs = trainer.fit()
    assert set(logs) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s"}
    assert np.isfinite(logs["loss"]) and reports.epochs[0][1]["lr"] > 0


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_resumes_and_exports_float32(policy: str) -> None:
    """The GPU code paths, run on the CPU: loss scaling, its checkpoint, the float32 export."""
    spec = JobSpec.model_validate({**RESUME_SPEC, "training": {
        "epochs": 2, "batch_size": 32,
        "early_stopping": {"monitor": "val_loss", "patience": 1, "restore_best": True}}})
    trainer, _ = _trainer(spec, init_seed=0, policy=policy)
    assert np.isfinite(trainer.fit()["loss"])
    scaled = isinstance(trainer.backend.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    resumed, _ = _trainer(spec, init_seed=1, policy=policy)
    assert resumed.load_checkpoint(trainer.checkpoint_bytes(2)) == 2

    exported = _trainer(spec, init_seed=2)[0].backend.model  # what the runner ships: float32
    exported.set_weights(trainer.backend.model.get_weights())
    x = trainer.backend.dataset.x_val
    np.testing.assert_allclose(np.asarray(exported(x)), np.asarray(trainer.backend.model(x)),
                               atol=0.1)


def test_regression_with_compile_reports_mae_and_mse() -> None:
    spec = JobSpec.model_validate({
        "framework": "keras", "task": "regression", "dataset": {"builtin": "diabetes"},
        "model": {"preset": "mlp"},
        "training": {"epochs": 2, "batch_size": 59, "loss": "huber", "metrics": ["mae", "mse"],
                     "compile": True}})
    keras.utils.set_random_seed(0)
    data = datasets.load(spec.dataset)
    mean, std = datasets.input_stats(data.x_train)
    y_mean, y_std = datasets.target_stats(data.y_train)
    model = build_model(resolve(spec.model, data.sample_shape), data.sample_shape, 1,
                        mean, std, y_mean, y_std)
    reporter = FakeReporter()
    callbacks, _ = standard_callbacks(spec, reporter, has_validation=True)  # type: ignore[arg-type]
    logs = TrainingLoop(spec, KerasBackend(spec, model, data), callbacks).fit()
    assert {"loss", "mae", "mse", "val_loss", "val_mae", "val_mse"} <= set(logs)
    assert logs["mse"] >= logs["mae"] > 1.0  # in the targets' own units, not standardised ones


class StopAtBatch(Callback):
    """Asks training to stop after `batch` (0-based) of 1-based `epoch`, as SIGTERM would."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch, self.current = epoch, batch, 0

    def on_epoch_begin(self, trainer: Any, epoch: int) -> None:
        self.current = epoch

    def on_batch_end(self, trainer: Any, batch: int) -> None:
        if (self.current, batch) == (self.epoch, self.batch):
            trainer.stop.set("SIGTERM")


def test_a_stop_mid_epoch_checkpoints_and_resumes_at_that_batch() -> None:
    spec = JobSpec.model_validate({**RESUME_SPEC, "training": {**RESUME_SPEC["training"],
                                                               "log_every_steps": 2}})
    straight, straight_reports = _trainer(spec, init_seed=0)
    straight.fit()

    stopped, reports = _trainer(spec, init_seed=0)
    stopped.callbacks.callbacks.append(StopAtBatch(epoch=3, batch=2))  # type: ignore[attr-defined]
    with pytest.raises(StopRequested):
        stopped.fit()
    assert any("after 3 batches of epoch 3" in e for e in reports.events)
    resumed, resumed_reports = _trainer(spec, init_seed=123)
    assert resumed.load_checkpoint(reports.checkpoints[2]) == 2 and resumed.resume_batch == 3
    resumed.fit()
    strip = [(e, {k: v for k, v in logs.items() if k != "epoch_time_s"})
             for e, logs in straight_reports.epochs if e > 2]
    assert [(e, {k: v for k, v in logs.items() if k != "epoch_time_s"})
            for e, logs in resumed_reports.epochs] == strip
    for a, b in zip(variables(straight), variables(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The logged steps: the stop wrote its own, the resume logs only later ones, and (past
    # its first, which averages the batches trained since the resume) the same values.
    before, after = [s for s, _ in reports.steps], [s for s, _ in resumed_reports.steps]
    assert before and after and before[-1] < after[0]
    assert before + after == [s for s, _ in straight_reports.steps]
    assert resumed_reports.steps[1:] == straight_reports.steps[len(before) + 1:]


def test_tensorflows_failed_allocations_are_out_of_memory() -> None:
    import tensorflow as tf

    from workers.runners.tfkeras.framework import out_of_memory

    assert out_of_memory(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating"))
    assert not out_of_memory(tf.errors.InvalidArgumentError(None, None, "bad shape"))


def test_the_spares_warm_up_trains_and_leaves_keras_as_a_fresh_process_has_it() -> None:
    from workers.runners.tfkeras import framework

    keras.layers.Dense(1)  # an auto-named layer before: its counter moves on
    framework.warm_up()  # raises if it fails (the spare logs it and goes on)
    # Keras's global state is reset: a job's auto-named objects get a fresh process's names.
    assert keras.layers.Dense(1).name == "dense"
    assert keras.optimizers.Adam().name == "adam"
    assert keras.mixed_precision.dtype_policy().name == "float32"
