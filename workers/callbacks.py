"""The training loop's side effects as callbacks, shared by every framework's trainer.

A trainer calls the hooks in a fixed order; metrics travel in one `logs` dict whose
keys are the same in both frameworks (loss, accuracy|mae, val_*, lr, epoch_time_s).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

from app.core.spec import EarlyStoppingSpec, JobSpec
from workers.reporting import JobReporter

Logs = dict[str, float]


class Trainer(Protocol):
    """What a callback may ask of the trainer that runs it."""

    stop_training: bool
    epochs: int

    def checkpoint_bytes(self, epoch: int) -> bytes: ...

    def snapshot_weights(self) -> Any: ...

    def restore_weights(self, snapshot: Any) -> None: ...


class Callback:
    """Hooks a trainer calls; `epoch` is the number of epochs completed (1-based) at epoch end."""

    name = "callback"

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None: ...

    def on_batch_end(self, trainer: Trainer, batch: int) -> None: ...

    def on_step_log(self, trainer: Trainer, step: int, logs: Logs) -> None:
        """Every `training.log_every_steps` optimizer steps: the mean training loss and
        metrics since the last one, and lr (values read from the device just for this)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None: ...

    def on_train_end(self, trainer: Trainer, logs: Logs) -> None: ...

    def on_interrupt(self, trainer: Trainer, epoch: int, batch: int) -> None:
        """Training stops (cancel, hand-back) after `batch` batches of the epoch after `epoch`."""

    def state(self) -> dict[str, Any]:
        """What a checkpoint must hold for this callback to resume."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None: ...


class CallbackList(Callback):
    """Calls each callback in order."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = callbacks

    def on_train_begin(self, trainer: Trainer) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(trainer)

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        for cb in self.callbacks:
            cb.on_epoch_begin(trainer, epoch)

    def on_batch_end(self, trainer: Trainer, batch: int) -> None:
        for cb in self.callbacks:
            cb.on_batch_end(trainer, batch)

    def on_step_log(self, trainer: Trainer, step: int, logs: Logs) -> None:
        for cb in self.callbacks:
            cb.on_step_log(trainer, step, logs)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(trainer, epoch, logs)

    def on_train_end(self, trainer: Trainer, logs: Logs) -> None:
        for cb in self.callbacks:
            cb.on_train_end(trainer, logs)

    def on_interrupt(self, trainer: Trainer, epoch: int, batch: int) -> None:
        for cb in self.callbacks:
            cb.on_interrupt(trainer, epoch, batch)

    def state(self) -> dict[str, Any]:
        return {cb.name: cb.state() for cb in self.callbacks}

    def load_state(self, state: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.load_state(state.get(cb.name, {}))


class BestTracker(Callback):
    """Remembers the best value of the monitored metric (the job's `best`)."""

    name = "best"

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor, self.mode = monitor, mode
        self.best: dict[str, Any] | None = None

    def improved(self, value: float, min_delta: float = 0.0) -> bool:
        if self.best is None:
            return math.isfinite(value)
        ref = float(self.best["value"])
        return value < ref - min_delta if self.mode == "min" else value > ref + min_delta

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        value = logs.get(self.monitor)
        if value is not None and self.improved(value):
            self.best = {"epoch": epoch, "monitor": self.monitor, "value": value,
                         "metrics": dict(logs)}

    def state(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")


class EarlyStopping(Callback):
    """Stops when the monitored metric has not improved for `patience` epochs."""

    name = "early_stopping"

    def __init__(self, spec: EarlyStoppingSpec, reporter: JobReporter) -> None:
        self.spec = spec
        self.reporter = reporter
        self.tracker = BestTracker(spec.monitor, spec.resolved_mode)
        self.wait = 0
        self.best_weights: Any = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        value = logs.get(self.spec.monitor)
        if value is None:
            return
        if self.tracker.improved(value, self.spec.min_delta):
            self.tracker.on_epoch_end(trainer, epoch, logs)
            self.wait = 0
            if self.spec.restore_best:
                self.best_weights = trainer.snapshot_weights()
            return
        self.wait += 1
        if self.wait >= self.spec.patience:
            trainer.stop_training = True
            self.reporter.event(f"early stopping at epoch {epoch}: {self.spec.monitor} has not "
                                f"improved for {self.wait} epochs")

    def on_train_end(self, trainer: Trainer, logs: Logs) -> None:
        if self.spec.restore_best and self.best_weights is not None:
            trainer.restore_weights(self.best_weights)
            self.reporter.event("restored the weights of the best epoch "
                                f"{(self.tracker.best or {}).get('epoch')}")

    def state(self) -> dict[str, Any]:
        return {"wait": self.wait, "best": self.tracker.best}

    def load_state(self, state: dict[str, Any]) -> None:
        self.wait = int(state.get("wait", 0))
        self.tracker.best = state.get("best")


class EpochRecorder(Callback):
    """Each epoch's metrics and progress, and every N epochs (and at the last) a full
    checkpoint, stored together: a job whose progress says epoch N resumes from epoch N
    when a checkpoint was due there. Keeps the newest K checkpoints.

    The reporter writes behind the loop, so an epoch's commit overlaps the next epoch.
    It must land early in it: once `WRITE_LAG_SHARE` of an epoch's time (at least
    `MIN_WRITE_LAG_S`) has passed, the loop waits for it at the next batch. A killed
    worker then redoes at most one epoch plus that share, however busy the machine
    (a small model's Python-bound loop holds the GIL and would otherwise starve the
    writer thread for most of an epoch).

    Logged steps (`training.log_every_steps`) wait in memory and go in with their epoch's
    commit, or on their own once STEP_FLUSH_S have passed (a long epoch) or training stops.
    """

    name = "recorder"
    WRITE_LAG_SHARE = 0.05
    MIN_WRITE_LAG_S = 0.05
    STEP_FLUSH_S = 10.0

    def __init__(self, reporter: JobReporter, tracker: BestTracker, every_epochs: int,
                 keep_last: int) -> None:
        self.reporter, self.tracker = reporter, tracker
        self.every, self.keep_last = every_epochs, keep_last
        self.seconds = 0.0  # time the training thread spends: serialising, queueing, waiting
        self.lag_s: float | None = None  # how long the last epoch's writes may take
        self.deadline = 0.0
        self.steps: list[tuple[int, Logs]] = []
        self.steps_since = time.perf_counter()

    def _take_steps(self) -> list[tuple[int, Logs]]:
        steps, self.steps, self.steps_since = self.steps, [], time.perf_counter()
        return steps

    def on_step_log(self, trainer: Trainer, step: int, logs: Logs) -> None:
        self.steps.append((step, dict(logs)))
        if time.perf_counter() - self.steps_since > self.STEP_FLUSH_S:
            self.reporter.record_steps(self._take_steps())

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        if self.lag_s is not None:
            self.deadline = time.perf_counter() + self.lag_s

    def on_batch_end(self, trainer: Trainer, batch: int) -> None:
        if self.deadline and time.perf_counter() > self.deadline:
            self.deadline = 0.0
            start = time.perf_counter()
            self.reporter.flush()
            self.seconds += time.perf_counter() - start

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        start = time.perf_counter()
        self.deadline = 0.0
        last = epoch == trainer.epochs or trainer.stop_training
        checkpoint = None if epoch % self.every and not last else trainer.checkpoint_bytes(epoch)
        self.reporter.record_epoch(epoch, trainer.epochs, logs, self.tracker.best,
                                   checkpoint=checkpoint, keep_last=self.keep_last,
                                   steps=self._take_steps())
        self.lag_s = max(self.MIN_WRITE_LAG_S,
                         self.WRITE_LAG_SHARE * logs.get("epoch_time_s", 0.0))
        self.seconds += time.perf_counter() - start

    def on_interrupt(self, trainer: Trainer, epoch: int, batch: int) -> None:
        # A mid-epoch checkpoint: a handed-back or cancelled job resumes at this
        # batch, not at the start of the epoch.
        if self.steps:
            self.reporter.record_steps(self._take_steps())
        self.reporter.save_checkpoint(epoch, trainer.checkpoint_bytes(epoch),
                                      {"interrupted_after_batch": batch}, keep_last=self.keep_last)
        self.reporter.event(f"checkpoint after {batch} batches of epoch {epoch + 1} "
                            "(training was asked to stop)", {"epoch": epoch, "batch": batch})


def standard_callbacks(spec: JobSpec, reporter: JobReporter, has_validation: bool,
                       extra: Sequence[Callback] = ()) -> tuple[CallbackList, BestTracker]:
    """The callbacks every job runs, in the order their effects depend on, then extra
    (callbacks that tests install: after the recorder, so they can wait for its writes)."""
    if spec.training.early_stopping is not None:
        monitor, mode = (spec.training.early_stopping.monitor,
                         spec.training.early_stopping.resolved_mode)
    else:
        metric = spec.metric_names()[1] if len(spec.metric_names()) > 1 else "loss"
        monitor = f"val_{metric}" if has_validation else metric
        mode = "max" if metric == "accuracy" else "min"
    from workers.phases import FirstStep  # phases subclasses Callback: imported here

    tracker = BestTracker(monitor, mode)
    callbacks: list[Callback] = [tracker]
    if spec.training.early_stopping is not None:
        callbacks.append(EarlyStopping(spec.training.early_stopping, reporter))
    callbacks.append(EpochRecorder(reporter, tracker, spec.checkpoint.every_epochs,
                                   spec.checkpoint.keep_last))
    callbacks.append(FirstStep(reporter))
    callbacks.extend(extra)
    return CallbackList(callbacks), tracker
