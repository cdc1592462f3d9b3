"""The spec's model, framework-free: presets expanded and every layer's input and output shape.

The runners build from it and the API estimates a job's size from it (app/core/estimate.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from app.core.errors import UserError
from app.core.spec import (
    ActivationLayer,
    BatchNormLayer,
    Conv2DLayer,
    DenseLayer,
    DropoutLayer,
    FlattenLayer,
    GlobalAvgPoolLayer,
    ModelSpec,
    PoolLayer,
    ResidualLayer,
)

Layer = Any  # one of the layer spec models in app.core.spec
Shape = tuple[int, ...]


def _preset_layers(name: str, input_shape: Shape) -> list[Layer]:
    image = len(input_shape) == 3
    if name == "mlp":
        head: list[Layer] = [FlattenLayer(type="flatten")] if image else []
        return [*head,
                DenseLayer(type="dense", units=128, activation="relu"),
                DropoutLayer(type="dropout", rate=0.1),
                DenseLayer(type="dense", units=64, activation="relu")]
    if name == "lenet5":
        return [Conv2DLayer(type="conv2d", filters=6, kernel_size=5, padding="same",
                            activation="relu"),
                PoolLayer(type="avgpool2d", pool_size=2),
                Conv2DLayer(type="conv2d", filters=16, kernel_size=5, padding="valid",
                            activation="relu"),
                PoolLayer(type="avgpool2d", pool_size=2),
                FlattenLayer(type="flatten"),
                DenseLayer(type="dense", units=120, activation="relu"),
                DenseLayer(type="dense", units=84, activation="relu")]
    if name == "resnet8":
        return [Conv2DLayer(type="conv2d", filters=16, kernel_size=3, use_bias=False),
                BatchNormLayer(type="batchnorm"),
                ActivationLayer(type="activation", activation="relu"),
                ResidualLayer(type="residual", filters=16, strides=1),
                ResidualLayer(type="residual", filters=32, strides=2),
                ResidualLayer(type="residual", filters=64, strides=2),
                GlobalAvgPoolLayer(type="global_avgpool")]
    if name == "airbench":
        return _airbench(input_shape)
    raise UserError(f"unknown preset {name!r}")


AIRBENCH_WIDTHS = (64, 256, 256)


def _airbench(input_shape: Shape) -> list[Layer]:
    """An airbench-like CIFAR-10 speed-record net: a conv stem, three conv-pool-bn-gelu blocks.

    It ends with a max pool over the whole remaining image, as airbench does; 'same'
    pooling keeps it valid for any image size.
    """
    def conv(filters: int) -> Layer:
        # No bias: the batchnorm that follows has its own shift.
        return Conv2DLayer(type="conv2d", filters=filters, kernel_size=3, use_bias=False)

    def bn_gelu() -> list[Layer]:
        return [BatchNormLayer(type="batchnorm"),
                ActivationLayer(type="activation", activation="gelu")]

    layers: list[Layer] = [Conv2DLayer(type="conv2d", filters=24, kernel_size=3,
                                       activation="gelu")]
    h, w = input_shape[0], input_shape[1]
    for width in AIRBENCH_WIDTHS:
        layers += [conv(width), PoolLayer(type="maxpool2d", pool_size=2, padding="same"),
                   *bn_gelu(), conv(width), *bn_gelu()]
        h, w = window_output(h, 2, 2, "same"), window_output(w, 2, 2, "same")
    return [*layers, PoolLayer(type="maxpool2d", pool_size=[h, w]), FlattenLayer(type="flatten")]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding (before, after) on one axis; the extra pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def window_output(size: int, kernel: int, stride: int, padding: str) -> int:
    """Output length of a conv or pool window along one axis."""
    if padding == "same":
        return math.ceil(size / stride)
    return (size - kernel) // stride + 1


@dataclass(frozen=True)
class ResolvedLayer:
    index: int
    spec: Layer
    input_shape: Shape
    output_shape: Shape


def _describe(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _out_shape(i: int, layer: Layer, shape: Shape) -> Shape:
    where = f"model.layers[{i}] ({layer.type})"
    image = len(shape) == 3
    if isinstance(layer, DenseLayer):
        if image:
            raise UserError(f"{where} needs a vector input but gets an image "
                            f"{_describe(shape)}; add a flatten or global_avgpool layer before it")
        return (layer.units,)
    if (isinstance(layer, (Conv2DLayer, PoolLayer, ResidualLayer, GlobalAvgPoolLayer))
            and not image):
        raise UserError(f"{where} needs image input [H, W, C] but gets {_describe(shape)}; "
                        "this dataset holds vectors, so use dense layers")
    if isinstance(layer, GlobalAvgPoolLayer):
        return (shape[2],)
    if isinstance(layer, ResidualLayer):
        return (math.ceil(shape[0] / layer.strides), math.ceil(shape[1] / layer.strides),
                layer.filters)
    if isinstance(layer, (Conv2DLayer, PoolLayer)):
        kernel = layer.kernel if isinstance(layer, Conv2DLayer) else layer.pool
        stride = layer.stride
        h = window_output(shape[0], kernel[0], stride[0], layer.padding)
        w = window_output(shape[1], kernel[1], stride[1], layer.padding)
        if h < 1 or w < 1:
            raise UserError(f"{where} with window {kernel} and '{layer.padding}' padding does "
                            f"not fit its input {_describe(shape)}")
        channels = layer.filters if isinstance(layer, Conv2DLayer) else shape[2]
        return (h, w, channels)
    if isinstance(layer, FlattenLayer):
        return (math.prod(shape),)
    if isinstance(layer, (DropoutLayer, ActivationLayer, BatchNormLayer)):
        return shape
    raise UserError(f"{where} is not supported")


def resolve(model: ModelSpec, input_shape: Shape) -> list[ResolvedLayer]:
    """The layer list with shapes, or UserError naming the first layer that does not fit."""
    layers = (model.layers if model.layers is not None
              else _preset_layers(model.preset or "", input_shape))
    resolved = []
    shape = tuple(input_shape)
    for i, layer in enumerate(layers):
        out = _out_shape(i, layer, shape)
        resolved.append(ResolvedLayer(i, layer, shape, out))
        shape = out
    if len(shape) != 1:
        raise UserError(f"the model ends with an image-shaped output {_describe(shape)}; end the "
                        "layer list with flatten or global_avgpool so the output layer can follow")
    return resolved
