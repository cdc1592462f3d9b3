"""The Keras backend of the training loop (TensorFlow): model, optimizer, data, checkpoints."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from app.core.spec import JobSpec, OptimizerSpec
from workers.datasets import Dataset
from workers.training.loop import LoopState

CHECKPOINT_FORMAT = "trainery.keras-checkpoint.v1"
# PyTorch's Adam epsilon; Keras's default (1e-7) would make the same spec step differently.
ADAM_EPSILON = 1e-8


def configure_devices(device: str, slots: int = 1) -> Any | None:
    """The (first) GPU for the device the worker's check verified (memory growth on), or
    None for the CPU; a job on several slots gets that many GPUs, or as many logical CPU
    devices (stand-ins for GPUs on a machine without them).

    The worker sets CUDA_VISIBLE_DEVICES before the runner starts (a multi-slot job's:
    its slots' GPUs), so "cuda:N" is this process's first visible GPU; "cpu" hides every
    GPU. This must run before TensorFlow creates its runtime.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if not device.startswith("cuda"):
        tf.config.set_visible_devices([], "GPU")
        if slots > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(slots)])
        return None
    if len(gpus) < slots:
        raise RuntimeError(f"the worker verified {device} and {slots} slots, but TensorFlow "
                           f"sees {len(gpus)} GPU(s)")
    tf.config.set_visible_devices(gpus[:slots], "GPU")
    for gpu in gpus[:slots]:
        tf.config.experimental.set_memory_growth(gpu, True)
    return gpus[0]


def replica_strategy(slots: int) -> tf.distribute.Strategy | None:
    """MirroredStrategy over the job's devices (None for one slot: the plain path)."""
    if slots == 1:
        return None
    kind = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    devices = [d.name for d in tf.config.list_logical_devices(kind)][:slots]
    # NCCL all-reduce is for GPUs; logical CPU devices reduce through one device.
    ops = None if kind == "GPU" else tf.distribute.ReductionToOneDevice()
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=ops)


def data_device() -> str:
    """Where the data lives for training: the GPU configure_devices left visible, else the CPU."""
    return "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"


def dtype_policy_for(precision: str, gpu: Any | None) -> tuple[str, str]:
    """The Keras dtype policy for a precision on this device, and a note if it fell back."""
    if precision == "fp32":
        return "float32", ""
    if gpu is None:
        return "float32", (f"{precision} mixed precision needs a GPU; training in fp32 on the CPU")
    if precision == "bf16":
        major, _ = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if major < 8:
            return "float32", "bf16 is not supported by this GPU; training in fp32"
        return "mixed_bfloat16", ""
    return "mixed_float16", ""


def make_optimizer(spec: OptimizerSpec, policy: str = "float32") -> keras.optimizers.Optimizer:
    """The Keras optimizer for a spec (weight decay other than adamw's is added by the trainer)."""
    optimizer: keras.optimizers.Optimizer
    if spec.name == "sgd":
        optimizer = keras.optimizers.SGD(spec.lr, momentum=spec.momentum, nesterov=spec.nesterov)
    elif spec.name == "adam":
        optimizer = keras.optimizers.Adam(spec.lr, epsilon=ADAM_EPSILON)
    elif spec.name == "adamw":
        optimizer = keras.optimizers.AdamW(spec.lr, weight_decay=spec.weight_decay,
                                           epsilon=ADAM_EPSILON)
    else:
        optimizer = keras.optimizers.RMSprop(spec.lr, rho=0.9, momentum=spec.momentum,
                                             epsilon=1e-7)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def l2_coefficient(spec: OptimizerSpec) -> float:
    """The L2 term added to the gradient, as PyTorch's sgd, adam and rmsprop weight_decay do.

    Keras's own weight_decay is decoupled (AdamW's), so only adamw uses it.
    """
    return 0.0 if spec.name == "adamw" else spec.weight_decay


def make_loss(name: str, reduction: str = "sum_over_batch_size") -> keras.losses.Loss:
    if name == "cross_entropy":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
    return {"mse": keras.losses.MeanSquaredError, "mae": keras.losses.MeanAbsoluteError,
            "huber": keras.losses.Huber}[name](reduction=reduction)


class KerasBackend:
    """The loop's Keras side: tensors kept on the device, sums read once per epoch.

    With a `strategy` (MirroredStrategy over a multi-slot job's devices, the model built
    in its scope), each global batch of `training.batch_size` is cut into one share per
    replica; each replica's loss is its share's sum over the global batch size, so the
    summed gradients are the global batch's mean gradient, as in one process.
    """

    def __init__(self, spec: JobSpec, model: keras.Model, dataset: Dataset,
                 policy: str = "float32", precision_note: str = "",
                 strategy: tf.distribute.Strategy | None = None) -> None:
        self.spec, self.model, self.dataset, self.policy = spec, model, dataset, policy
        self.precision_note = precision_note  # why the policy is not the spec's precision
        self.strategy = strategy
        self.n_train, self.n_val = len(dataset.x_train), len(dataset.x_val)
        self.metrics = spec.metric_names()[1:]
        with strategy.scope() if strategy else contextlib.nullcontext():
            self.optimizer = make_optimizer(spec.training.optimizer, policy)
            self.optimizer.build(model.trainable_variables)
        self.l2 = l2_coefficient(spec.training.optimizer)
        self.loss_fn = make_loss(spec.loss_name())
        self.loss_sum = make_loss(spec.loss_name(), reduction="sum")
        with tf.device(data_device()):
            # Placed where the steps run, so a batch is gathered there, never copied per step.
            self.x_train, self.y_train = tf.identity(dataset.x_train), tf.identity(dataset.y_train)
            self.x_val, self.y_val = tf.identity(dataset.x_val), tf.identity(dataset.y_val)
        jit = spec.training.compile
        x_spec = tf.TensorSpec([None, *dataset.sample_shape], self.x_train.dtype)
        y_spec = tf.TensorSpec([None, *dataset.y_train.shape[1:]], self.y_train.dtype)
        self._step = tf.function(self._train_step, jit_compile=jit,
                                 input_signature=[tf.TensorSpec([None], tf.int32)])
        self._replicated_step = tf.function(self._replicated_steps)
        self.eval_step = tf.function(self._eval_step, jit_compile=jit,
                                     input_signature=[x_spec, y_spec])

    def describe(self) -> tuple[str, dict[str, Any]]:
        """Where and with what it trains, for the job's events."""
        device = data_device().lstrip("/")
        where = (f"{device} with tensorflow {tf.__version__} and keras {keras.__version__} "
                 f"({self.policy})")
        details: dict[str, Any] = {"device": device, "policy": self.policy}
        if self.strategy is not None:
            replicas = self.strategy.num_replicas_in_sync
            where += f", MirroredStrategy over {replicas} devices"
            details["replicas"] = replicas
        return where, details

    # -- checkpoints -------------------------------------------------------

    def save(self, state: LoopState) -> bytes:
        """Every model and optimizer variable and state, as an npz (no pickle).

        The model's variables include the dropout layers' seed generators (the
        only RNG training draws from; batch order is a function of seed and epoch).
        """
        arrays = {f"model.{i:04d}": v.numpy() for i, v in enumerate(self.model.variables)}
        arrays.update({f"optimizer.{i:04d}": v.numpy()
                       for i, v in enumerate(self.optimizer.variables)})
        if state.batch:  # stopped mid-epoch: batches done and their sums
            arrays["partial_totals"] = state.partial_totals
        meta = {"format": CHECKPOINT_FORMAT, "epoch": state.epoch, "batch": state.batch,
                "model": [v.path for v in self.model.variables],
                "optimizer": [v.path for v in self.optimizer.variables],
                "callbacks": state.callbacks}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def load(self, payload: bytes) -> LoopState:
        """Restore what save stored; the loop's part of it."""
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes())
            if meta.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"not a Keras checkpoint of this runner ({meta.get('format')!r})")
            for group, variables in (("model", self.model.variables),
                                     ("optimizer", self.optimizer.variables)):
                if len(meta[group]) != len(variables):
                    raise ValueError(f"the checkpoint's {group} has {len(meta[group])} variables, "
                                     f"this one {len(variables)}")
                for i, v in enumerate(variables):
                    value = npz[f"{group}.{i:04d}"]
                    if tuple(value.shape) != tuple(v.shape):
                        raise ValueError(f"checkpoint variable {meta[group][i]} has shape "
                                         f"{value.shape}, {v.path} needs {tuple(v.shape)}")
                    v.assign(value)
            batch = int(meta.get("batch", 0))
            totals = npz["partial_totals"] if batch else None
        return LoopState(int(meta["epoch"]), meta["callbacks"], batch, totals)

    def snapshot_weights(self) -> list[np.ndarray]:
        return [v.numpy() for v in self.model.weights]

    def restore_weights(self, snapshot: list[np.ndarray]) -> None:
        for v, value in zip(self.model.weights, snapshot, strict=True):
            v.assign(value)

    # -- what the loop calls -------------------------------------------------

    def set_lr(self, lr: float) -> None:
        self.optimizer.learning_rate = lr

    def should_stop(self, requested: bool) -> bool:
        return requested  # one process, even over several devices

    def begin_training(self) -> None: ...

    def end_training(self) -> None: ...

    def batches(self, epoch: int) -> Iterator[tf.Tensor]:
        """Index batches in an order from (seed, epoch) only, so a resumed run sees the
        same batches an uninterrupted one would have."""
        rng = np.random.default_rng(self.spec.training.seed * 1_000_003 + epoch)
        order = rng.permutation(self.n_train).astype(np.int32)
        bs = self.spec.training.batch_size
        for start in range(0, len(order), bs):
            yield tf.constant(order[start:start + bs])

    def zeros(self) -> tf.Tensor:
        return tf.zeros(1 + len(self.metrics), tf.float64)

    def to_host(self, total: tf.Tensor) -> np.ndarray:
        return total.numpy()  # type: ignore[no-any-return]

    def to_device(self, saved: np.ndarray) -> tf.Tensor:
        return tf.constant(saved, tf.float64)

    def values(self, total: tf.Tensor) -> list[float]:
        return total.numpy().tolist()  # type: ignore[no-any-return]

    def _sums(self, loss: tf.Tensor, out: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """[loss * n, metric sums...] for one batch, in float64."""
        n = tf.cast(tf.shape(out)[0], tf.float64)
        sums = [tf.cast(loss, tf.float64) * n]
        for name in self.metrics:
            if name == "accuracy":
                hit = tf.equal(tf.argmax(out, axis=1, output_type=y.dtype), y)
                sums.append(tf.reduce_sum(tf.cast(hit, tf.float64)))
            elif name == "mae":
                sums.append(tf.reduce_sum(tf.cast(tf.reduce_mean(tf.abs(out - y), axis=1),
                                                  tf.float64)))
            else:  # mse
                sums.append(tf.reduce_sum(tf.cast(tf.reduce_mean(tf.square(out - y), axis=1),
                                                  tf.float64)))
        return tf.stack(sums)

    def train_batch(self, idx: tf.Tensor) -> tf.Tensor:
        """Train one global batch (on every replica); its sums."""
        if self.strategy is None:
            return self._step(idx)
        shares = np.array_split(idx.numpy(), self.strategy.num_replicas_in_sync)
        per_replica = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(shares[ctx.replica_id_in_sync_group]))
        return self._replicated_step(per_replica, tf.constant(float(len(idx)), tf.float32))

    def _replicated_steps(self, per_replica: Any, global_size: tf.Tensor) -> tf.Tensor:
        assert self.strategy is not None
        sums = self.strategy.run(self._train_step, args=(per_replica, global_size))
        return self.strategy.reduce("SUM", sums, axis=None)

    def _train_step(self, idx: tf.Tensor, global_size: tf.Tensor | None = None) -> tf.Tensor:
        x, y = tf.gather(self.x_train, idx), tf.gather(self.y_train, idx)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            out = tf.cast(self.model(x, training=True), tf.float32)
            loss = self.loss_fn(y, out)
            objective = loss
            l2_share = 1.0
            if global_size is not None:
                # Replica gradients are summed: this share's part of the global mean
                # (an empty share adds zeros, where its mean would be nan). Keras divides
                # a mean loss by the replica count in a replica context: the reported
                # loss is the share's own mean, from its sum.
                share_sum = self.loss_sum(y, out)
                objective = share_sum / global_size
                loss = tf.math.divide_no_nan(share_sum, tf.cast(tf.shape(out)[0], tf.float32))
                l2_share = 1.0 / self.strategy.num_replicas_in_sync  # type: ignore[union-attr]
            if self.l2:
                objective += 0.5 * self.l2 * l2_share * tf.add_n(
                    [tf.reduce_sum(tf.square(v)) for v in variables])
            scaled = self.optimizer.scale_loss(objective)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        sums = self._sums(loss, out, y)
        return sums if global_size is None else tf.where(tf.shape(out)[0] > 0, sums,
                                                        tf.zeros_like(sums))

    def _eval_step(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        out = tf.cast(self.model(x, training=False), tf.float32)
        return self._sums(self.loss_fn(y, out), out, y)

    def evaluate(self) -> tf.Tensor:
        total = self.zeros()
        bs = max(self.spec.training.batch_size, 1024)
        for start in range(0, self.n_val, bs):
            total += self.eval_step(self.x_val[start:start + bs], self.y_val[start:start + bs])
        return total
