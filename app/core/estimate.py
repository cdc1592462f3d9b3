"""What a job will hold, from its spec alone: parameters, dataset bytes and memory.

No framework is imported: the API checks these at submit against the service's limits
(`TRAINERY_LIMIT_MAX_PARAMS`, `_MAX_DATASET_BYTES`, `_JOB_MEMORY_BYTES`). The parameter
count is exact (it is what `sum(p.numel() for p in model.parameters())` gives for the
PyTorch model and the trainable weights of the Keras one; unit tests build both); the
memory is a rough, documented upper-side estimate (docs/operations.md, Resource limits):

    memory = 4 B x params x (1 weights + 1 gradients + k optimizer state)
           + 4 B x 2 x batch x (input + the tensors each layer keeps for backward)
           + 2 x dataset bytes

k is 2 for adam/adamw, 1 for rmsprop or sgd with momentum (2 for rmsprop with momentum),
0 for plain sgd; activations count once forward and once for their gradients (the
evaluation pass, batches of at least 1024 without gradients, counts when larger); the
dataset counts twice because the loaded arrays and their train/validation split live
together while a runner loads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.core.catalog import BUILTIN_DATASETS, SYNTHETIC
from app.core.modelspec import ResolvedLayer
from app.core.spec import (
    ActivationLayer,
    BatchNormLayer,
    Conv2DLayer,
    DatasetSpec,
    DenseLayer,
    DropoutLayer,
    FlattenLayer,
    JobSpec,
    ResidualLayer,
)

FLOAT_BYTES = 4  # weights, gradients, optimizer state and activations train in float32
EVAL_BATCH_MIN = 1024  # the backends evaluate in batches of max(batch_size, 1024)
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "rmsprop": 1, "sgd": 0}


@dataclass(frozen=True)
class DataShape:
    """A dataset's size as the runner will hold it."""

    n_samples: int  # training and validation together
    sample_shape: tuple[int, ...]
    itemsize: int  # bytes per input value
    label_bytes: int  # bytes per sample's label or targets
    num_outputs: int  # logits per class, or regression targets

    @property
    def nbytes(self) -> int:
        """Inputs and labels, as arrays."""
        return self.n_samples * (math.prod(self.sample_shape) * self.itemsize + self.label_bytes)


def builtin_data(spec: DatasetSpec) -> DataShape | None:
    """The shape of a builtin or synthetic dataset (float32 inputs); None for an upload."""
    if spec.is_synthetic:
        assert spec.n_samples and spec.sample_shape and spec.num_classes
        return DataShape(spec.n_samples, tuple(spec.sample_shape), FLOAT_BYTES, 8,
                         spec.num_classes)
    builtin = BUILTIN_DATASETS.get(spec.builtin or "")
    if builtin is None or builtin.name == SYNTHETIC:
        return None
    if builtin.task == "regression":
        return DataShape(builtin.n_samples, builtin.sample_shape, FLOAT_BYTES, FLOAT_BYTES, 1)
    return DataShape(builtin.n_samples, builtin.sample_shape, FLOAT_BYTES, 8, builtin.num_classes)


def uploaded_data(n_samples: int, n_val: int, sample_shape: list[int], dtype: str,
                  num_classes: int | None) -> DataShape:
    """An uploaded dataset's shape from its stored metadata (regression counts one target)."""
    if num_classes:
        return DataShape(n_samples + n_val, tuple(sample_shape), np.dtype(dtype).itemsize, 8,
                         num_classes)
    return DataShape(n_samples + n_val, tuple(sample_shape), np.dtype(dtype).itemsize,
                     FLOAT_BYTES, 1)


def layer_params(layer: ResolvedLayer) -> int:
    """Trainable parameters of one resolved layer, as both builders make it."""
    spec, shape = layer.spec, layer.input_shape
    if isinstance(spec, DenseLayer):
        return shape[0] * spec.units + (spec.units if spec.use_bias else 0)
    if isinstance(spec, Conv2DLayer):
        kh, kw = spec.kernel
        return kh * kw * shape[2] * spec.filters + (spec.filters if spec.use_bias else 0)
    if isinstance(spec, BatchNormLayer):
        return 2 * shape[-1]  # scale and shift; the running statistics are not trained
    if isinstance(spec, ResidualLayer):
        cin, f = shape[2], spec.filters
        body = 9 * cin * f + 9 * f * f + 2 * (2 * f)  # two bias-free 3x3 convs, two batchnorms
        projected = spec.strides != 1 or cin != f
        return body + (cin * f + 2 * f if projected else 0)
    return 0


def _features(layers: list[ResolvedLayer], input_shape: tuple[int, ...]) -> int:
    return layers[-1].output_shape[0] if layers else math.prod(input_shape)


def param_count(layers: list[ResolvedLayer], input_shape: tuple[int, ...],
                num_outputs: int) -> int:
    """Trainable parameters of the whole model: the spec's layers and the output layer."""
    head = _features(layers, input_shape) * num_outputs + num_outputs
    return sum(layer_params(r) for r in layers) + head


def _kept_tensors(layer: ResolvedLayer) -> float:
    """Tensors of the layer's output size that a training step keeps for backward."""
    spec = layer.spec
    if isinstance(spec, (DenseLayer, Conv2DLayer)):
        return 2 if spec.activation != "linear" else 1
    if isinstance(spec, ResidualLayer):
        # conv, batchnorm, activation, conv, batchnorm, add, activation (+ projection, its bn)
        projected = spec.strides != 1 or layer.input_shape[2] != spec.filters
        return 9 if projected else 7
    if isinstance(spec, DropoutLayer):
        return 2  # the output and its mask
    if isinstance(spec, FlattenLayer):
        return 1 if len(layer.input_shape) == 3 else 0  # channels-last flatten copies
    if isinstance(spec, (BatchNormLayer, ActivationLayer)):
        return 1
    return 1  # pools


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one job attempt needs, by what holds them."""

    params: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    dataset: int
    evaluation_bound: bool = False  # the evaluation batches, not training's, set activations

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.dataset


def estimate(spec: JobSpec, layers: list[ResolvedLayer], data: DataShape) -> MemoryEstimate:
    """The job's parameters and memory (the formula is in this module's docstring)."""
    params = param_count(layers, data.sample_shape, data.num_outputs)
    optimizer = spec.training.optimizer
    states = OPTIMIZER_STATES[optimizer.name] + (1 if optimizer.momentum else 0)
    outputs = [math.prod(r.output_shape) for r in layers] + [data.num_outputs]
    kept = math.prod(data.sample_shape) + sum(
        math.prod(r.output_shape) * _kept_tensors(r) for r in layers) + data.num_outputs
    batch = spec.training.batch_size
    train = batch * kept
    evaluate = max(batch, EVAL_BATCH_MIN) * max([math.prod(data.sample_shape), *outputs])
    return MemoryEstimate(
        params=params, weights=FLOAT_BYTES * params, gradients=FLOAT_BYTES * params,
        optimizer=FLOAT_BYTES * params * states,
        activations=int(FLOAT_BYTES * 2 * max(train, evaluate)), dataset=2 * data.nbytes,
        evaluation_bound=evaluate > train)
