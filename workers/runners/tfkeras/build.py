"""Spec -> keras.Model: the one place that maps each layer type to Keras.

Only built-in Keras layers go into the model, so the saved .keras file loads with
`keras.models.load_model` (safe_mode on) in a Python without this project.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import keras
import numpy as np

from app.core.modelspec import ResolvedLayer
from app.core.spec import (
    ActivationLayer,
    BatchNormLayer,
    Conv2DLayer,
    DenseLayer,
    DropoutLayer,
    FlattenLayer,
    GlobalAvgPoolLayer,
    PoolLayer,
    ResidualLayer,
)

LEAKY_RELU_SLOPE = 0.2  # Keras 3's default; the PyTorch side uses the same
RESIDUAL_BN = {"momentum": 0.9, "epsilon": 1e-5}  # torch BatchNorm2d(eps=1e-5, momentum=0.1)
KerasTensor = Any


def activation(name: str, layer_name: str) -> keras.layers.Layer:
    """The activation layer for a spec name."""
    if name == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE, name=layer_name)
    return keras.layers.Activation(name, name=layer_name)


def _activated(x: KerasTensor, name: str, prefix: str) -> KerasTensor:
    return x if name == "linear" else activation(name, f"{prefix}_{name}")(x)


def _residual(x: KerasTensor, spec: ResidualLayer, in_channels: int, prefix: str) -> KerasTensor:
    """Basic residual block: conv-bn-act-conv-bn plus a (projected) shortcut, then act."""
    conv = keras.layers.Conv2D
    y = conv(spec.filters, 3, strides=spec.strides, padding="same", use_bias=False,
             name=f"{prefix}_conv1")(x)
    y = keras.layers.BatchNormalization(**RESIDUAL_BN, name=f"{prefix}_bn1")(y)
    y = activation(spec.activation, f"{prefix}_act1")(y)
    y = conv(spec.filters, 3, padding="same", use_bias=False, name=f"{prefix}_conv2")(y)
    y = keras.layers.BatchNormalization(**RESIDUAL_BN, name=f"{prefix}_bn2")(y)
    shortcut = x
    if spec.strides != 1 or in_channels != spec.filters:
        shortcut = conv(spec.filters, 1, strides=spec.strides, use_bias=False,
                        name=f"{prefix}_proj")(x)
        shortcut = keras.layers.BatchNormalization(**RESIDUAL_BN,
                                                   name=f"{prefix}_proj_bn")(shortcut)
    y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return activation(spec.activation, f"{prefix}_out")(y)


def apply_layer(x: KerasTensor, r: ResolvedLayer) -> KerasTensor:
    """One resolved spec layer applied to x (NHWC images or NC vectors)."""
    spec, shape = r.spec, r.input_shape
    prefix = f"l{r.index}_{spec.type}"
    if isinstance(spec, DenseLayer):
        x = keras.layers.Dense(spec.units, use_bias=spec.use_bias, name=prefix)(x)
        return _activated(x, spec.activation, prefix)
    if isinstance(spec, Conv2DLayer):
        x = keras.layers.Conv2D(spec.filters, tuple(spec.kernel), strides=tuple(spec.stride),
                                padding=spec.padding, use_bias=spec.use_bias, name=prefix)(x)
        return _activated(x, spec.activation, prefix)
    if isinstance(spec, PoolLayer):
        is_max = spec.type == "maxpool2d"
        pool = keras.layers.MaxPooling2D if is_max else keras.layers.AveragePooling2D
        return pool(tuple(spec.pool), strides=tuple(spec.stride), padding=spec.padding,
                   name=prefix)(x)
    if isinstance(spec, GlobalAvgPoolLayer):
        return keras.layers.GlobalAveragePooling2D(name=prefix)(x)
    if isinstance(spec, FlattenLayer):
        return keras.layers.Flatten(name=prefix)(x) if len(shape) == 3 else x
    if isinstance(spec, DropoutLayer):
        return keras.layers.Dropout(spec.rate, name=prefix)(x)
    if isinstance(spec, BatchNormLayer):
        return keras.layers.BatchNormalization(momentum=spec.momentum, epsilon=spec.epsilon,
                                               name=prefix)(x)
    if isinstance(spec, ActivationLayer):
        return activation(spec.activation, prefix)(x)
    if isinstance(spec, ResidualLayer):
        return _residual(x, spec, shape[2], prefix)
    raise TypeError(f"no Keras mapping for {spec!r}")


@contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build layers under a Keras dtype policy ('float32', 'mixed_bfloat16', 'mixed_float16')."""
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def build_model(layers: list[ResolvedLayer], input_shape: tuple[int, ...], num_outputs: int,
                mean: np.ndarray, std: np.ndarray, y_mean: np.ndarray | None = None,
                y_std: np.ndarray | None = None, policy: str = "float32") -> keras.Model:
    """The whole model: input normalisation, the spec's layers, the output layer.

    It takes raw inputs as the dataset holds them and returns logits, or
    predictions in the targets' own units. Normalisation, the output layer and
    the de-standardisation stay float32 under a mixed policy.
    """
    with dtype_policy(policy):
        inputs = keras.Input(shape=input_shape, dtype="float32", name="inputs")
        x = keras.layers.Normalization(axis=-1, mean=mean.reshape(-1),
                                       variance=np.square(std).reshape(-1), dtype="float32",
                                       name="normalize")(inputs)
        for r in layers:
            x = apply_layer(x, r)
        if not layers and len(input_shape) == 3:
            x = keras.layers.Flatten(name="flatten")(x)
        outputs = keras.layers.Dense(num_outputs, dtype="float32", name="head")(x)
        if y_mean is not None and y_std is not None:
            outputs = keras.layers.Rescaling(scale=y_std.reshape(-1).tolist(),
                                             offset=y_mean.reshape(-1).tolist(),
                                             dtype="float32", name="targets")(outputs)
        return keras.Model(inputs, outputs, name="trainery")
