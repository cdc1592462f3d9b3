"""Train one job with Keras on TensorFlow: data, model, loop, checkpoints, exports."""

from __future__ import annotations

import functools
import sys

import keras
import tensorflow as tf

from app.core.spec import JobSpec
from workers import dataset_cache, datasets
from workers.callbacks import standard_callbacks
from workers.modelspec import resolve
from workers.reporting import JobReporter
from workers.runners.common import StopFlag, model_card, resume_from_latest
from workers.runners.onnx_artifact import output_name, save_onnx
from workers.runners.tfkeras.build import build_model
from workers.runners.tfkeras.export import keras_bytes
from workers.runners.tfkeras.onnx_export import onnx_bytes
from workers.runners.tfkeras.trainer import KerasTrainer, configure_devices, dtype_policy_for


def imported_frameworks() -> list[str]:
    """Which of the two frameworks this process has imported (it should be tensorflow only)."""
    return sorted(m for m in ("torch", "tensorflow") if m in sys.modules)


def run(spec: JobSpec, reporter: JobReporter, stop: StopFlag) -> None:
    """Train spec to the end (resuming from the latest checkpoint) and store the model."""
    gpu = configure_devices()
    keras.utils.set_random_seed(spec.training.seed)
    data = datasets.load(spec.dataset, fetch=dataset_cache.fetcher(reporter))
    layers = resolve(spec.model, data.sample_shape)
    mean, std = datasets.input_stats(data.x_train)
    y_mean = y_std = None
    if spec.task == "regression":
        y_mean, y_std = datasets.target_stats(data.y_train)
    make_model = functools.partial(build_model, layers, data.sample_shape, data.num_outputs,
                                   mean, std, y_mean, y_std)
    policy, precision_note = dtype_policy_for(spec.training.precision, gpu)
    if precision_note:
        reporter.event(precision_note, {"precision": spec.training.precision, "policy": policy})
    model = make_model(policy=policy)
    callbacks, _ = standard_callbacks(spec, reporter, has_validation=len(data.x_val) > 0)
    trainer = KerasTrainer(spec, model, data, callbacks, stop, policy)
    resume_from_latest(trainer, reporter)
    device = "GPU:0" if gpu is not None else "CPU:0"
    reporter.event(f"training on {device} with tensorflow {tf.__version__} and keras "
                   f"{keras.__version__} ({policy}): {len(data.x_train)} training and "
                   f"{len(data.x_val)} validation samples")
    trainer.fit()

    exported = trainer.model
    if policy != "float32":
        # Ship a float32 model, as the PyTorch runner does: mixed precision is a
        # training-time choice, not part of the downloaded model.
        exported = make_model(policy="float32")
        exported.set_weights(trainer.model.get_weights())
    reporter.save_artifact("keras", keras_bytes(exported, data.x_train[:2]),
                           "model.keras", "application/octet-stream")
    onnx_note = save_onnx(reporter, lambda: onnx_bytes(exported, data.x_train[:16],
                                                       output_name(spec.task)),
                          data.input_dtype, spec.task)
    reporter.set_model_card({**model_card(
        spec, data, {"tensorflow": tf.__version__, "keras": keras.__version__},
        "keras.models.load_model(path); model(x) or model.predict(x) with x as the dataset "
        "holds it (images NHWC), normalisation inside"), **onnx_note})
    frameworks = imported_frameworks()
    reporter.event("frameworks imported by the runner: " + ", ".join(frameworks),
                   {"frameworks": frameworks})
