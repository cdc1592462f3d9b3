"""The one epoch loop both frameworks run; a framework supplies a small `Backend`.

The loop owns the schedule (the learning rate of each epoch), the callbacks, the
`logs` dict, resuming mid-epoch at a batch, and stopping at a batch boundary. The
backend owns the model, the optimizer, the data on the device and the checkpoint
format. Batch results stay on the device (`train_batch` returns device-side sums,
added up on the device); the loop reads them back once per epoch, and with
`training.log_every_steps` once every that many optimizer steps as well.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.core.spec import JobSpec
from workers.callbacks import Callback, Logs
from workers.runners.common import StopFlag, StopRequested
from workers.schedules import lr_at


@dataclass
class LoopState:
    """What a checkpoint holds besides the backend's own state."""

    epoch: int  # epochs completed
    callbacks: dict[str, Any]
    batch: int = 0  # batches of the next epoch already trained (a mid-epoch stop)
    partial_totals: Any = None  # their sums, in the backend's host form
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """What a framework supplies to the loop."""

    n_train: int
    n_val: int

    def set_lr(self, lr: float) -> None: ...

    def batches(self, epoch: int) -> Iterator[Any]:
        """The epoch's batches in an order that depends on (seed, epoch) only."""
        ...

    def zeros(self) -> Any:
        """A device-side [loss, *metrics] sum of zeros."""
        ...

    def train_batch(self, batch: Any) -> Any:
        """Train one batch; its device-side [loss * n, *metric sums] (no host sync)."""
        ...

    def evaluate(self) -> Any:
        """The device-side [loss * n, *metric sums] over the validation split, in eval mode."""
        ...

    def to_host(self, total: Any) -> Any:
        """The sums as the checkpoint keeps them (one host sync)."""
        ...

    def to_device(self, saved: Any) -> Any:
        """Sums from a checkpoint back on the device."""
        ...

    def values(self, total: Any) -> list[float]:
        """The sums as floats (one host sync)."""
        ...

    def begin_training(self) -> None: ...

    def end_training(self) -> None: ...

    def save(self, state: LoopState) -> bytes:
        """A checkpoint: the backend's state and state."""
        ...

    def load(self, payload: bytes) -> LoopState:
        """Restore the backend's state from a checkpoint; the loop's part of it."""
        ...

    def snapshot_weights(self) -> Any: ...

    def restore_weights(self, snapshot: Any) -> None: ...

    def should_stop(self, requested: bool) -> bool:
        """Whether to stop after this batch, given this process's flag (a data-parallel
        backend makes every rank agree)."""
        ...


class TrainingLoop:
    """Runs a backend's epochs with the callbacks; the `Trainer` the callbacks see."""

    def __init__(self, spec: JobSpec, backend: Backend, callbacks: Callback,
                 stop: StopFlag | None = None) -> None:
        self.spec, self.backend = spec, backend
        self.callbacks, self.stop = callbacks, stop or StopFlag()
        self.epochs = spec.training.epochs
        self.metrics = ["loss", *spec.metric_names()[1:]]
        self.stop_training = False
        self.start_epoch = 0
        self.resume_batch = 0  # batches of start_epoch already trained (a mid-epoch resume)
        self.resume_totals: Any = None
        self.interrupted: tuple[int, Any] | None = None
        self.log_every = spec.training.log_every_steps
        self.lr = 0.0
        # The sums and sample count since the last logged step, on the device. A resume
        # starts them afresh: its first logged step averages the batches trained since.
        self.step_sums: Any = None
        self.step_samples = 0

    # -- checkpoints -------------------------------------------------------

    def checkpoint_bytes(self, epoch: int) -> bytes:
        """Everything needed to continue after `epoch` completed epochs."""
        batch, totals = self.interrupted if self.interrupted else (0, None)
        return self.backend.save(LoopState(epoch, self.callbacks.state(), batch, totals))

    def load_checkpoint(self, payload: bytes) -> int:
        """Restore a checkpoint; the number of epochs it had completed."""
        state = self.backend.load(payload)
        self.callbacks.load_state(state.callbacks)
        self.start_epoch = state.epoch
        self.resume_batch = state.batch
        self.resume_totals = state.partial_totals if state.batch else None
        return self.start_epoch

    def snapshot_weights(self) -> Any:
        return self.backend.snapshot_weights()

    def restore_weights(self, snapshot: Any) -> None:
        self.backend.restore_weights(snapshot)

    # -- the loop ----------------------------------------------------------

    def _logs(self, total: Any, n: int) -> Logs:
        values = self.backend.values(total)  # the one host sync
        return {name: value / max(1, n) for name, value in zip(self.metrics, values, strict=True)}

    def _log_step(self, epoch: int, batch: int, sums: Any) -> None:
        """Add a batch to the interval; at every log_every-th optimizer step, report it."""
        bs, n = self.spec.training.batch_size, self.backend.n_train
        self.step_sums = sums if self.step_sums is None else self.step_sums + sums
        self.step_samples += min(bs, n - batch * bs)
        step = epoch * math.ceil(n / bs) + batch + 1
        if self.log_every is None or step % self.log_every:
            return
        logs = self._logs(self.step_sums, self.step_samples)  # the interval's one host sync
        logs["lr"] = self.lr
        self.step_sums, self.step_samples = None, 0
        self.callbacks.on_step_log(self, step, logs)

    def _train_epoch(self, epoch: int) -> Logs:
        total = self.backend.zeros()
        skip, self.resume_batch = self.resume_batch, 0
        if self.resume_totals is not None:  # resuming mid-epoch: the sums so far
            total += self.backend.to_device(self.resume_totals)
            self.resume_totals = None
        for batch, item in enumerate(self.backend.batches(epoch)):
            if batch < skip:
                continue  # trained before the interruption
            # Nothing here reads a value back: no device sync per batch.
            sums = self.backend.train_batch(item)
            total += sums
            if self.log_every is not None:
                self._log_step(epoch, batch, sums)
            self.callbacks.on_batch_end(self, batch)
            if self.backend.should_stop(self.stop.is_set()):
                self.interrupted = (batch + 1, self.backend.to_host(total))
                self.callbacks.on_interrupt(self, epoch, batch + 1)
                raise StopRequested(self.stop.reason)
        return self._logs(total, self.backend.n_train)

    def fit(self) -> Logs:
        """Train from start_epoch to the end (or an early stop); the last epoch's logs."""
        logs: Logs = {}
        self.backend.begin_training()
        self.callbacks.on_train_begin(self)
        base_lr = self.spec.training.optimizer.lr
        for epoch in range(self.start_epoch, self.epochs):
            lr = lr_at(self.spec.training.lr_schedule, base_lr, epoch, self.epochs)
            self.backend.set_lr(lr)
            self.lr = lr
            self.callbacks.on_epoch_begin(self, epoch + 1)
            started = time.perf_counter()
            logs = self._train_epoch(epoch)
            if self.backend.n_val:
                val = self._logs(self.backend.evaluate(), self.backend.n_val)
                logs.update({f"val_{k}": v for k, v in val.items()})
            logs["lr"] = lr
            logs["epoch_time_s"] = time.perf_counter() - started
            self.callbacks.on_epoch_end(self, epoch + 1, logs)
            if self.stop_training:
                break
        self.callbacks.on_train_end(self, logs)
        self.backend.end_training()
        return logs
