"""The Keras side of a job (TensorFlow backend): device and seeds, model and backend, downloads."""

from __future__ import annotations

import contextlib
from typing import Any

import keras
import tensorflow as tf

from app.core.spec import JobSpec
from workers.datasets import Dataset
from workers.reporting import JobReporter
from workers.runners import ModelArgs
from workers.runners.onnx_artifact import output_name, save_onnx
from workers.runners.tfkeras.backend import (
    KerasBackend,
    configure_devices,
    dtype_policy_for,
    replica_strategy,
)
from workers.runners.tfkeras.build import build_model
from workers.runners.tfkeras.export import keras_bytes
from workers.runners.tfkeras.onnx_export import onnx_bytes
from workers.training.replicas import Replicas

INPUT_NOTE = ("keras.models.load_model(path); model(x) or model.predict(x) with x as the dataset "
              "holds it (images NHWC), normalisation inside")


def versions() -> dict[str, str]:
    return {"tensorflow": tf.__version__, "keras": keras.__version__}


def out_of_memory(exc: BaseException) -> bool:
    """TensorFlow's allocators (CPU and GPU) report a failed allocation as ResourceExhausted."""
    return isinstance(exc, tf.errors.ResourceExhaustedError)


def setup(spec: JobSpec, device: str, replicas: Replicas) -> tuple[Any | None, int]:
    """Use the verified device, or all the job's slots' devices (before TensorFlow starts
    its runtime), then seed; the (first) GPU and the slot count."""
    gpu = configure_devices(device, replicas.slots)
    keras.utils.set_random_seed(spec.training.seed)
    return gpu, replicas.slots


def make_backend(spec: JobSpec, data: Dataset, model_args: ModelArgs,
                 place: tuple[Any | None, int]) -> KerasBackend:
    """The model for model_args, in the dtype policy the precision gets on this device (in a
    MirroredStrategy's scope over a multi-slot job's devices)."""
    gpu, slots = place
    policy, note = dtype_policy_for(spec.training.precision, gpu)
    strategy = replica_strategy(slots)
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = build_model(*model_args, policy=policy)
    return KerasBackend(spec, model, data, policy, note, strategy)


def export(spec: JobSpec, data: Dataset, backend: KerasBackend, model_args: ModelArgs,
           reporter: JobReporter, onnx_fault: bool) -> dict[str, Any]:
    """The .keras file and ONNX; the model card's notes on them."""
    exported = backend.model
    if backend.policy != "float32" or backend.strategy is not None:
        # Ship a float32 model, as the PyTorch runner does: mixed precision is a
        # training-time choice, not part of the downloaded model; nor are a
        # strategy's mirrored variables.
        exported = build_model(*model_args, policy="float32")
        exported.set_weights(backend.model.get_weights())
    reporter.save_artifact("keras", keras_bytes(exported, data.x_train[:2]),
                           "model.keras", "application/octet-stream")
    return save_onnx(reporter, lambda: onnx_bytes(exported, data.x_train[:16],
                                                  output_name(spec.task)),
                     data.input_dtype, spec.task, fail=onnx_fault)
