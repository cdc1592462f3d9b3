"""Keras loops for the benchmarks: the runner's loop and backend on a real store, and model.fit."""

from __future__ import annotations

import math
import time
from typing import Any

import workers.runners.tfkeras  # noqa: F401  fixes Keras's backend before keras loads

# isort: split
import keras
import numpy as np
import tensorflow as tf

from app.core.modelspec import resolve
from app.core.spec import JobSpec
from bench.jobstore import claimed_job
from bench.timing import EpochClock, LoopResult
from workers import datasets
from workers.callbacks import CallbackList, EpochRecorder, standard_callbacks
from workers.datasets import Dataset
from workers.runners.tfkeras.backend import KerasBackend, make_loss, make_optimizer
from workers.runners.tfkeras.build import build_model
from workers.training.loop import TrainingLoop


def build(spec: JobSpec, data: Dataset, policy: str) -> keras.Model:
    """The model the runner builds for spec, from the seed: the same weights at every call."""
    keras.utils.set_random_seed(spec.training.seed)
    mean, std = datasets.input_stats(data.x_train)
    return build_model(resolve(spec.model, data.sample_shape), data.sample_shape,
                       data.num_outputs, mean, std, policy=policy)


def trainery_run(spec: JobSpec, data: Dataset, model: keras.Model, policy: str,
                 name: str = "(a) Trainery loop, keras backend") -> LoopResult:
    """The runner's trainer with the standard callbacks writing to a real SQLite store."""
    with claimed_job(spec) as reporter:
        callbacks, _ = standard_callbacks(spec, reporter, has_validation=len(data.x_val) > 0)
        clock = EpochClock()
        backend = KerasBackend(spec, model, data, policy)
        TrainingLoop(spec, backend, CallbackList([callbacks, clock])).fit()
    side = sum(cb.seconds for cb in callbacks.callbacks
               if isinstance(cb, EpochRecorder))
    return LoopResult.of(name, len(data.x_train), clock.epochs, side,
                         background=reporter.background_seconds)


class _EpochTimes(keras.callbacks.Callback):  # type: ignore[misc]
    """Times each epoch from its start to its end, validation included, as EpochClock does."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0.0
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.seconds.append(time.perf_counter() - self.started)


def batch_orders(n: int, seed: int, epochs: int, batch_size: int) -> tf.data.Dataset:
    """Index batches in the trainer's order: a permutation from (seed, epoch) per epoch."""
    orders = np.stack([np.random.default_rng(seed * 1_000_003 + epoch).permutation(n)
                       for epoch in range(epochs)]).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices(orders).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))


def fit_run(spec: JobSpec, data: Dataset, model: keras.Model, policy: str,
            name: str = "(b) plain keras model.fit") -> LoopResult:
    """model.fit on the same model and data, fed the trainer's batch order through tf.data."""
    t = spec.training
    model.compile(optimizer=make_optimizer(t.optimizer, policy), loss=make_loss(spec.loss_name()),
                  metrics=["accuracy"], jit_compile=t.compile)
    n, bs = len(data.x_train), t.batch_size
    x, y = tf.constant(data.x_train), tf.constant(data.y_train)
    batches = (batch_orders(n, t.seed, t.epochs, bs)
               .map(lambda idx: (tf.gather(x, idx), tf.gather(y, idx)))
               .prefetch(tf.data.AUTOTUNE))
    times = _EpochTimes()
    history = model.fit(batches, epochs=t.epochs, steps_per_epoch=math.ceil(n / bs),
                        validation_data=(data.x_val, data.y_val),
                        validation_batch_size=max(bs, 1024), shuffle=False, verbose=0,
                        callbacks=[times])
    return LoopResult(name, n, times.seconds, [float(v) for v in history.history["loss"]])
