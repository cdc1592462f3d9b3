"""The framework-free epoch loop on a NumPy backend: hooks, host reads, stop and resume."""

from __future__ import annotations

import pickle
import typing
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from app.core.spec import JobSpec
from workers.callbacks import Callback, CallbackList, Logs, Trainer
from workers.runners import FRAMEWORKS, preload
from workers.runners.common import StopRequested
from workers.training.loop import LoopState, TrainingLoop

SPEC = JobSpec.model_validate({
    "framework": "pytorch", "dataset": {"builtin": "iris"}, "model": {"preset": "mlp"},
    "training": {"epochs": 3, "batch_size": 4, "lr_schedule": {"name": "step", "step_size": 1,
                                                                "gamma": 0.5}},
})


class CountingBackend:
    """A 'model' that is one number; counts how often the loop reads sums back."""

    def __init__(self, n_train: int = 10, n_val: int = 3) -> None:
        self.n_train, self.n_val = n_train, n_val
        self.weight, self.lr, self.host_reads = 0.0, 0.0, 0
        self.trained: list[tuple[int, int]] = []  # (epoch, first index of the batch)
        self.epoch = 0

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        self.epoch = epoch
        order = np.random.default_rng(epoch).permutation(self.n_train)
        for start in range(0, self.n_train, SPEC.training.batch_size):
            yield order[start:start + SPEC.training.batch_size]

    def should_stop(self, requested: bool) -> bool:
        return requested

    def zeros(self) -> np.ndarray:
        return np.zeros(2)

    def train_batch(self, idx: np.ndarray) -> np.ndarray:
        self.trained.append((self.epoch, int(idx[0])))
        self.weight += self.lr * float(idx.sum())
        return np.array([self.weight * len(idx), float(len(idx))])

    def evaluate(self) -> np.ndarray:
        return np.array([self.weight * self.n_val, float(self.n_val)])

    def to_host(self, total: np.ndarray) -> np.ndarray:
        self.host_reads += 1
        return total.copy()

    def to_device(self, saved: np.ndarray) -> np.ndarray:
        return saved.copy()

    def values(self, total: np.ndarray) -> list[float]:
        self.host_reads += 1
        return typing.cast(list[float], total.tolist())

    def begin_training(self) -> None: ...

    def end_training(self) -> None: ...

    def save(self, state: LoopState) -> bytes:
        return pickle.dumps((self.weight, state))

    def load(self, payload: bytes) -> LoopState:
        self.weight, state = pickle.loads(payload)  # noqa: S301 - our own bytes
        return typing.cast(LoopState, state)

    def snapshot_weights(self) -> float:
        return self.weight

    def restore_weights(self, snapshot: Any) -> None:
        self.weight = float(snapshot)


class Hooks(Callback):
    """Records the hooks in order; asks to stop at (epoch, batch) if given."""

    def __init__(self, stop_at: tuple[int, int] | None = None) -> None:
        self.calls: list[str] = []
        self.stop_at, self.epoch = stop_at, 0
        self.payload = b""

    def on_train_begin(self, trainer: Trainer) -> None:
        self.calls.append("train_begin")

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        self.calls.append(f"epoch_begin {epoch}")
        self.epoch = epoch

    def on_batch_end(self, trainer: Trainer, batch: int) -> None:
        if self.stop_at == (self.epoch, batch):
            trainer.stop.set("SIGTERM")  # type: ignore[attr-defined]

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        self.calls.append(f"epoch_end {epoch} {sorted(logs)}")

    def on_interrupt(self, trainer: Trainer, epoch: int, batch: int) -> None:
        self.calls.append(f"interrupt {epoch} {batch}")
        self.payload = trainer.checkpoint_bytes(epoch)

    def on_train_end(self, trainer: Trainer, logs: Logs) -> None:
        self.calls.append("train_end")


def test_hooks_run_in_order_and_sums_are_read_once_per_epoch_and_split() -> None:
    backend, hooks = CountingBackend(), Hooks()
    logs = TrainingLoop(SPEC, backend, CallbackList([hooks])).fit()
    keys = "['accuracy', 'epoch_time_s', 'loss', 'lr', 'val_accuracy', 'val_loss']"
    assert hooks.calls == ["train_begin", *[c for e in (1, 2, 3) for c in (
        f"epoch_begin {e}", f"epoch_end {e} {keys}")], "train_end"]
    assert backend.host_reads == 3 * 2  # training sums and validation sums, once an epoch
    assert logs["lr"] == SPEC.training.optimizer.lr * 0.25


def test_a_stop_checkpoints_mid_epoch_and_the_resume_trains_only_the_rest() -> None:
    straight = CountingBackend()
    straight_logs = TrainingLoop(SPEC, straight, CallbackList([Hooks()])).fit()
    stopped, hooks = CountingBackend(), Hooks(stop_at=(2, 1))
    with pytest.raises(StopRequested):
        TrainingLoop(SPEC, stopped, CallbackList([hooks])).fit()
    assert hooks.calls[-1] == "interrupt 1 2"
    resumed = CountingBackend()
    loop = TrainingLoop(SPEC, resumed, CallbackList([Hooks()]))
    assert loop.load_checkpoint(hooks.payload) == 1 and loop.resume_batch == 2
    resumed_logs = loop.fit()
    assert stopped.trained + resumed.trained == straight.trained
    assert resumed.weight == straight.weight
    assert {k: v for k, v in resumed_logs.items() if k != "epoch_time_s"} == \
        {k: v for k, v in straight_logs.items() if k != "epoch_time_s"}


def test_the_registry_knows_every_spec_framework_and_refuses_others() -> None:
    framework = typing.get_type_hints(JobSpec)["framework"]
    assert set(FRAMEWORKS) == set(typing.get_args(framework))
    with pytest.raises(ValueError, match="unknown framework"):
        preload("jax")


class StepLog(Callback):
    """Records the logged steps."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, Logs]] = []

    def on_step_log(self, trainer: Trainer, step: int, logs: Logs) -> None:
        self.steps.append((step, logs))


STEP_SPEC = SPEC.model_copy(update={"training": SPEC.training.model_copy(
    update={"log_every_steps": 2})})


def test_logged_steps_average_their_batches_and_cost_one_read_each() -> None:
    # 10 samples in batches of 4: 3 steps an epoch (4, 4, 2 samples), 9 steps in all.
    backend, log = CountingBackend(), StepLog()
    TrainingLoop(STEP_SPEC, backend, CallbackList([log])).fit()
    assert [s for s, _ in log.steps] == [2, 4, 6, 8]
    assert backend.host_reads == 3 * 2 + 4
    # Step 4 spans epochs: batch 3 of epoch 1 (2 samples) and batch 1 of epoch 2 (4).
    assert log.steps[1][1]["accuracy"] == 1.0 and log.steps[1][1]["lr"] == \
        STEP_SPEC.training.optimizer.lr * 0.5
    straight = CountingBackend()
    plain = StepLog()
    TrainingLoop(SPEC, straight, CallbackList([plain])).fit()
    assert plain.steps == [] and straight.host_reads == 3 * 2


def test_a_resumed_run_logs_only_the_steps_after_its_checkpoint() -> None:
    straight = StepLog()
    TrainingLoop(STEP_SPEC, CountingBackend(), CallbackList([straight])).fit()
    before, hooks = StepLog(), Hooks(stop_at=(2, 1))  # stops after step 5
    with pytest.raises(StopRequested):
        TrainingLoop(STEP_SPEC, CountingBackend(), CallbackList([hooks, before])).fit()
    after = StepLog()
    loop = TrainingLoop(STEP_SPEC, CountingBackend(), CallbackList([after]))
    loop.load_checkpoint(hooks.payload)
    loop.fit()
    assert [s for s, _ in before.steps] == [2, 4] and [s for s, _ in after.steps] == [6, 8]
    # Step 6 averages only the batch trained since the resume; later ones are the same.
    assert after.steps[1] == straight.steps[3]
