"""The PyTorch training loop: a fixed skeleton whose side effects are callbacks."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from app.schemas.spec import JobSpec, OptimizerSpec
from workers.callbacks import Callback, Logs
from workers.datasets import Dataset
from workers.runners.common import StopFlag, StopRequested
from workers.schedules import lr_at


def pick_device() -> torch.device:
    """The device this process was pinned to: the one visible GPU, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def make_optimizer(spec: OptimizerSpec, params: Any) -> torch.optim.Optimizer:
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                               nesterov=spec.nesterov, weight_decay=spec.weight_decay)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    # Keras's RMSprop: rho 0.9, epsilon 1e-7 (PyTorch's alpha is rho).
    return torch.optim.RMSprop(params, lr=spec.lr, alpha=0.9, eps=1e-7,
                               momentum=spec.momentum, weight_decay=spec.weight_decay)


def make_loss(name: str) -> nn.Module:
    return {"cross_entropy": nn.CrossEntropyLoss, "mse": nn.MSELoss, "mae": nn.L1Loss,
            "huber": nn.HuberLoss}[name]()


def autocast_dtype(precision: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for the requested precision on this device, and a note if it fell back."""
    if precision == "fp32":
        return None, ""
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return None, "bf16 is not supported by this GPU; training in fp32"
        return torch.bfloat16, ""
    if device.type != "cuda":
        return None, "fp16 mixed precision needs a CUDA device; training in fp32 on the CPU"
    return torch.float16, ""


class TorchTrainer:
    """Runs epochs over tensors kept on the device; syncs with the host once per epoch."""

    def __init__(self, spec: JobSpec, model: nn.Module, dataset: Dataset, device: torch.device,
                 callbacks: Callback, stop: StopFlag | None = None) -> None:
        self.spec, self.dataset, self.device = spec, dataset, device
        self.callbacks, self.stop = callbacks, stop or StopFlag()
        self.epochs = spec.training.epochs
        self.stop_training = False
        self.start_epoch = 0
        self.model = model.to(device)
        self.optimizer = make_optimizer(spec.training.optimizer, self.model.parameters())
        self.loss_fn = make_loss(spec.loss_name())
        self.metrics = spec.metric_names()[1:]
        self.classification = spec.task == "classification"
        self.amp_dtype, self.precision_note = autocast_dtype(spec.training.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.x_train, self.y_train = self._to_device(dataset.x_train, dataset.y_train)
        self.x_val, self.y_val = self._to_device(dataset.x_val, dataset.y_val)
        self.step_fn = self._train_step
        if spec.training.compile:
            self.step_fn = torch.compile(self._train_step)  # type: ignore[assignment]

    def _to_device(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
        if self.device.type == "cuda":
            xt, yt = xt.pin_memory(), yt.pin_memory()
        return xt.to(self.device, non_blocking=True), yt.to(self.device, non_blocking=True)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- checkpoints -------------------------------------------------------

    def checkpoint_bytes(self, epoch: int) -> bytes:
        """Everything needed to continue after `epoch` completed epochs."""
        state = {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "callbacks": self.callbacks.state(),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    def load_checkpoint(self, payload: bytes) -> int:
        """Restore a checkpoint; the number of epochs it had completed."""
        state = torch.load(io.BytesIO(payload), map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"].cpu())
        if state["cuda_rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.callbacks.load_state(state["callbacks"])
        self.start_epoch = int(state["epoch"])
        return self.start_epoch

    def snapshot_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore_weights(self, snapshot: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(snapshot)

    # -- the loop ----------------------------------------------------------

    def _batches(self, epoch: int) -> Iterator[torch.Tensor]:
        # The order depends on (seed, epoch) only, so a resumed run sees the
        # same batches an uninterrupted one would have.
        gen = torch.Generator().manual_seed(self.spec.training.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.x_train), generator=gen).to(self.device)
        bs = self.spec.training.batch_size
        for start in range(0, len(order), bs):
            yield order[start:start + bs]

    def _train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            out = self.model(xb)
            loss = self.loss_fn(out.float(), yb)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), out.detach()

    def _metric_sums(self, out: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        sums = []
        for name in self.metrics:
            if name == "accuracy":
                sums.append((out.argmax(dim=1) == y).sum())
            elif name == "mae":
                sums.append((out.float() - y).abs().mean(dim=1).sum())
            else:  # mse
                sums.append(((out.float() - y) ** 2).mean(dim=1).sum())
        return sums

    def _train_epoch(self, epoch: int) -> Logs:
        self.model.train()
        n = len(self.x_train)
        total = torch.zeros(1 + len(self.metrics), device=self.device, dtype=torch.float64)
        for batch, idx in enumerate(self._batches(epoch)):
            xb, yb = self.x_train[idx], self.y_train[idx]
            loss, out = self.step_fn(xb, yb)
            total += torch.stack([loss.double() * len(idx),
                                  *(s.double() for s in self._metric_sums(out, yb))])
            self.callbacks.on_batch_end(self, batch)
            if self.stop.is_set():
                raise StopRequested(self.stop.reason)
        values = (total / n).tolist()  # the epoch's one host sync
        return dict(zip(["loss", *self.metrics], values, strict=True))

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> Logs:
        """Loss and metrics over (x, y) in eval mode."""
        self.model.eval()
        total = torch.zeros(1 + len(self.metrics), device=self.device, dtype=torch.float64)
        bs = max(self.spec.training.batch_size, 1024)
        for start in range(0, len(x), bs):
            xb, yb = x[start:start + bs], y[start:start + bs]
            with self._autocast():
                out = self.model(xb)
            loss = self.loss_fn(out.float(), yb)
            total += torch.stack([loss.double() * len(xb),
                                  *(s.double() for s in self._metric_sums(out, yb))])
        values = (total / max(1, len(x))).tolist()
        return dict(zip(["loss", *self.metrics], values, strict=True))

    def fit(self) -> Logs:
        """Train from start_epoch to the end (or an early stop); the last epoch's logs."""
        logs: Logs = {}
        self.callbacks.on_train_begin(self)
        base_lr = self.spec.training.optimizer.lr
        for epoch in range(self.start_epoch, self.epochs):
            lr = lr_at(self.spec.training.lr_schedule, base_lr, epoch, self.epochs)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.callbacks.on_epoch_begin(self, epoch + 1)
            started = time.perf_counter()
            logs = self._train_epoch(epoch)
            if len(self.x_val):
                logs.update({f"val_{k}": v for k, v in self.evaluate(self.x_val, self.y_val).items()})
            logs["lr"] = lr
            logs["epoch_time_s"] = time.perf_counter() - started
            self.callbacks.on_epoch_end(self, epoch + 1, logs)
            if self.stop_training:
                break
        self.callbacks.on_train_end(self, logs)
        return logs
