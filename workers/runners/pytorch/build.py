"""Spec -> torch.nn.Module: the one place that maps each layer type to PyTorch."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from app.core.modelspec import ResolvedLayer, same_padding
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

LEAKY_RELU_SLOPE = 0.2  # Keras 3's default, so both frameworks mean the same


def activation(name: str) -> nn.Module:
    """The activation module for a spec name."""
    factories: dict[str, Callable[[], nn.Module]] = {
        "linear": nn.Identity, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid, "elu": nn.ELU, "selu": nn.SELU, "silu": nn.SiLU,
        "softplus": nn.Softplus, "leaky_relu": lambda: nn.LeakyReLU(LEAKY_RELU_SLOPE),
    }
    return factories[name]()


def _pair(values: list[int]) -> tuple[int, int]:
    # The spec validates kernels and strides to two values; torch's stubs want a 2-tuple.
    return values[0], values[1]


def _pads(shape: tuple[int, ...], kernel: list[int],
          stride: list[int]) -> tuple[int, int, int, int]:
    top, bottom = same_padding(shape[0], kernel[0], stride[0])
    left, right = same_padding(shape[1], kernel[1], stride[1])
    return left, right, top, bottom


def _windowed(pads: tuple[int, int, int, int], layer: nn.Module, fill: float = 0.0) -> nn.Module:
    """layer with TensorFlow's 'same' padding, symmetric or not."""
    left, right, top, bottom = pads
    if (left, top) == (right, bottom):
        return layer  # the caller already gave the layer symmetric padding
    return nn.Sequential(nn.ConstantPad2d(pads, fill), layer)


def conv2d(in_ch: int, out_ch: int, shape: tuple[int, ...], kernel: list[int], stride: list[int],
           padding: str, bias: bool) -> nn.Module:
    if padding == "valid":
        return nn.Conv2d(in_ch, out_ch, _pair(kernel), _pair(stride), 0, bias=bias)
    pads = _pads(shape, kernel, stride)
    symmetric = (pads[0], pads[2]) == (pads[1], pads[3])
    conv = nn.Conv2d(in_ch, out_ch, _pair(kernel), _pair(stride),
                     (pads[2], pads[0]) if symmetric else 0, bias=bias)
    return _windowed(pads, conv)


def pool(layer: PoolLayer, shape: tuple[int, ...]) -> nn.Module:
    kernel, stride = _pair(layer.pool), _pair(layer.stride)
    is_max = layer.type == "maxpool2d"
    if layer.padding == "valid":
        return nn.MaxPool2d(kernel, stride) if is_max else nn.AvgPool2d(kernel, stride)
    pads = _pads(shape, layer.pool, layer.stride)
    symmetric = (pads[0], pads[2]) == (pads[1], pads[3])
    pad_arg = (pads[2], pads[0]) if symmetric else 0
    if is_max:
        return _windowed(pads, nn.MaxPool2d(kernel, stride, pad_arg), float("-inf"))
    # TensorFlow leaves padding out of the average.
    if symmetric:
        return nn.AvgPool2d(kernel, stride, pad_arg, count_include_pad=False)
    return SameAvgPool2d(pads, kernel, stride)


class SameAvgPool2d(nn.Module):
    """Average pooling with asymmetric 'same' padding that averages real cells only, as TF does."""

    def __init__(self, pads: tuple[int, int, int, int], kernel: tuple[int, int],
                 stride: tuple[int, int]) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d(pads)
        self.pool = nn.AvgPool2d(kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Explicitly padded zeros would count in AvgPool2d's divisor; divide by the real share.
        # Annotated locals, not cast(): Module.__call__ returns Any in torch's stubs, and
        # TorchScript compiles these forward methods.
        pooled: torch.Tensor = self.pool(self.pad(x))
        share: torch.Tensor = self.pool(self.pad(torch.ones_like(x[:1, :1])))
        return pooled / share


class Residual(nn.Module):
    """Basic residual block: conv-bn-act-conv-bn plus a (projected) shortcut, then act."""

    def __init__(self, in_ch: int, spec: ResidualLayer, shape: tuple[int, ...]) -> None:
        super().__init__()
        s: list[int] = [spec.strides, spec.strides]
        mid = (-(-shape[0] // spec.strides), -(-shape[1] // spec.strides), spec.filters)
        self.body = nn.Sequential(
            conv2d(in_ch, spec.filters, shape, [3, 3], s, "same", False),
            nn.BatchNorm2d(spec.filters, eps=1e-5, momentum=0.1),
            activation(spec.activation),
            conv2d(spec.filters, spec.filters, mid, [3, 3], [1, 1], "same", False),
            nn.BatchNorm2d(spec.filters, eps=1e-5, momentum=0.1),
        )
        if spec.strides != 1 or in_ch != spec.filters:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_ch, spec.filters, 1, spec.strides, bias=False),
                nn.BatchNorm2d(spec.filters, eps=1e-5, momentum=0.1))
        else:
            self.shortcut = nn.Identity()
        self.act = activation(spec.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.body(x) + self.shortcut(x))
        return out


def layer_module(r: ResolvedLayer) -> nn.Module:
    """One resolved spec layer as a module working on NCHW (images) or NC (vectors)."""
    spec, shape = r.spec, r.input_shape
    if isinstance(spec, DenseLayer):
        return nn.Sequential(nn.Linear(shape[0], spec.units, bias=spec.use_bias),
                             activation(spec.activation))
    if isinstance(spec, Conv2DLayer):
        return nn.Sequential(conv2d(shape[2], spec.filters, shape, spec.kernel, spec.stride,
                                    spec.padding, spec.use_bias), activation(spec.activation))
    if isinstance(spec, PoolLayer):
        return pool(spec, shape)
    if isinstance(spec, GlobalAvgPoolLayer):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if isinstance(spec, FlattenLayer):
        # Flatten in NHWC order, as Keras does, so a layer list means one thing.
        return ChannelsLastFlatten() if len(shape) == 3 else nn.Identity()
    if isinstance(spec, DropoutLayer):
        return nn.Dropout(spec.rate)
    if isinstance(spec, BatchNormLayer):
        cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        channels = shape[2] if len(shape) == 3 else shape[0]
        return cls(channels, eps=spec.epsilon, momentum=1.0 - spec.momentum)
    if isinstance(spec, ActivationLayer):
        return activation(spec.activation)
    if isinstance(spec, ResidualLayer):
        return Residual(shape[2], spec, shape)
    raise TypeError(f"no PyTorch mapping for {spec!r}")


class ChannelsLastFlatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


class TrainedModel(nn.Module):
    """Raw inputs as the dataset holds them -> logits or predictions; normalisation inside."""

    if TYPE_CHECKING:
        # Buffers registered in __init__, declared so they type as tensors, not Tensor |
        # Module; for mypy only, as TorchScript cannot read string class annotations.
        in_mean: torch.Tensor
        in_std: torch.Tensor
        out_scale: torch.Tensor
        out_shift: torch.Tensor

    def __init__(self, body: nn.Module, head: nn.Linear, mean: np.ndarray, std: np.ndarray,
                 image: bool, y_mean: np.ndarray | None = None,
                 y_std: np.ndarray | None = None) -> None:
        super().__init__()
        self.image = image
        self.register_buffer("in_mean", torch.from_numpy(mean))
        self.register_buffer("in_std", torch.from_numpy(std))
        self.body, self.head = body, head
        ones = np.ones(head.out_features, np.float32)
        zeros = np.zeros(head.out_features, np.float32)
        self.register_buffer("out_scale", torch.from_numpy(y_std if y_std is not None else ones))
        self.register_buffer("out_shift", torch.from_numpy(y_mean if y_mean is not None else zeros))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(torch.float32) - self.in_mean) / self.in_std
        if self.image:
            x = x.permute(0, 3, 1, 2)
        out: torch.Tensor = self.head(self.body(x))
        return out * self.out_scale + self.out_shift


def _keras_like_init(module: nn.Module) -> None:
    # Glorot-uniform weights and zero biases, Keras's defaults: the same spec
    # starts from the same kind of weights in both frameworks.
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_model(layers: list[ResolvedLayer], input_shape: tuple[int, ...], num_outputs: int,
                mean: np.ndarray, std: np.ndarray, y_mean: np.ndarray | None = None,
                y_std: np.ndarray | None = None) -> TrainedModel:
    """The whole model: input normalisation, the spec's layers, the output layer."""
    body = nn.Sequential(*(layer_module(r) for r in layers))
    features = layers[-1].output_shape[0] if layers else int(np.prod(input_shape))
    if not layers and len(input_shape) == 3:
        body = nn.Sequential(ChannelsLastFlatten())
    model = TrainedModel(body, nn.Linear(features, num_outputs), mean, std,
                         len(input_shape) == 3, y_mean, y_std)
    model.apply(_keras_like_init)
    return model
