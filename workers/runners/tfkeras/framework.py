"""The Keras side of a job (TensorFlow backend): device and seeds, model and backend, downloads."""

from __future__ import annotations

import contextlib
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from app.core.modelspec import resolve
from app.core.spec import JobSpec
from workers.datasets import Dataset, input_stats
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
from workers.runners.tfkeras.onnx_export import onnx_bytes, preload_onnx
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


# What a spare trains a step of before its job: the MLP preset on vectors, and a
# small convolutional net with the layers of the image presets (lenet5, resnet8,
# airbench), each on a few random samples of three classes.
WARM_UP_MODELS: tuple[tuple[dict[str, Any], tuple[int, ...]], ...] = (
    ({"preset": "mlp"}, (4,)),
    ({"layers": [{"type": "conv2d", "filters": 4, "activation": "relu"},
                 {"type": "batchnorm"}, {"type": "maxpool2d"}, {"type": "avgpool2d"},
                 {"type": "residual", "filters": 4, "strides": 2},
                 {"type": "global_avgpool"}]}, (8, 8, 1)),
)


def warm_up() -> None:
    """In a spare on a host without a GPU: start TensorFlow's runtime and run tiny
    models' train and eval steps through the job's own code, then reset Keras's
    global state (layer-name counters, seed generator, dtype policy).

    A job's first step otherwise pays for both: the runtime starts with its first op,
    and the first trace in a process converts Keras's layer code with AutoGraph
    (cached per process, seconds; the job's own model still traces, in a fraction of
    that). The job then seeds every generator itself (setup). With a GPU visible
    nothing runs: an op would take a CUDA context in an idle spare, before the job's
    configure_devices. On any host it imports what the job's ONNX export imports
    (onnx_export.preload_onnx; no op runs).
    """
    preload_onnx()
    if tf.config.list_physical_devices("GPU"):
        return
    configure_devices("cpu")
    rng = np.random.default_rng(0)
    for model, shape in WARM_UP_MODELS:
        spec = JobSpec.model_validate({
            "name": "warm-up", "framework": "keras", "dataset": {"builtin": "iris"},
            "model": model, "training": {"epochs": 1, "batch_size": 4}})
        x = rng.normal(size=(8, *shape)).astype(np.float32)
        y = np.arange(8, dtype=np.int64) % 3
        data = Dataset("warm-up", "classification", x, y, x, y, ["a", "b", "c"])
        mean, std = input_stats(x)
        args = ModelArgs(resolve(spec.model, shape), shape, 3, mean, std, None, None)
        backend = make_backend(spec, data, args, (None, 1))
        for batch in backend.batches(1):
            backend.train_batch(batch)
        backend.evaluate().numpy()
    keras.backend.clear_session()


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
