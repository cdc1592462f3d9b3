"""The PyTorch training loop: a fixed skeleton whose side effects are callbacks."""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from app.core.spec import JobSpec, OptimizerSpec
from workers.callbacks import Callback, Logs
from workers.datasets import Dataset
from workers.runners.common import StopFlag, StopRequested
from workers.schedules import lr_at

# The share of the GPU's free memory the dataset may take to be kept there whole;
# a larger one stays in pinned host memory and is copied over a batch at a time.
DEVICE_DATA_SHARE = 0.5


def pick_device() -> torch.device:
    """The device this process was pinned to: the one visible GPU, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def make_optimizer(spec: OptimizerSpec, params: Any, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer for a spec; `fused` (CUDA) takes one kernel per step and lets the
    fp16 grad scaler skip steps on the device instead of reading found-inf on the host."""
    fuse = True if fused else None  # None: PyTorch's default implementation for the device
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                               nesterov=spec.nesterov, weight_decay=spec.weight_decay, fused=fuse)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay, fused=fuse)
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, fused=fuse)
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


def data_budget(device: torch.device) -> int:
    """How many bytes of data may live on the device: a share of a GPU's free memory."""
    if device.type != "cuda":
        return sys.maxsize  # the host is the device: nothing to copy
    free, _total = torch.cuda.mem_get_info(device)
    return int(free * DEVICE_DATA_SHARE)


class TorchTrainer:
    """Runs epochs over tensors kept on the device; syncs with the host once per epoch.

    Data larger than `data_budget_bytes` (default: data_budget) stays in pinned host
    memory instead and each batch is gathered there and copied without blocking.
    """

    def __init__(self, spec: JobSpec, model: nn.Module, dataset: Dataset, device: torch.device,
                 callbacks: Callback, stop: StopFlag | None = None,
                 data_budget_bytes: int | None = None) -> None:
        self.spec, self.dataset, self.device = spec, dataset, device
        self.callbacks, self.stop = callbacks, stop or StopFlag()
        self.epochs = spec.training.epochs
        self.stop_training = False
        self.start_epoch = 0
        self.resume_batch = 0  # batches of start_epoch already trained (a mid-epoch resume)
        self.resume_totals: torch.Tensor | None = None
        self.interrupted: tuple[int, torch.Tensor] | None = None
        cuda = device.type == "cuda"
        self.model = model.to(device)
        self.channels_last = cuda and any(isinstance(m, nn.Conv2d) for m in model.modules())
        if self.channels_last:
            # The model permutes NHWC input to an NCHW view that is already
            # channels-last in memory; channels-last weights keep cuDNN in NHWC
            # kernels end to end, with no layout transposes.
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        self.optimizer = make_optimizer(spec.training.optimizer, self.model.parameters(),
                                        fused=cuda and spec.training.optimizer.name != "rmsprop")
        self.loss_fn = make_loss(spec.loss_name())
        self.metrics = spec.metric_names()[1:]
        self.classification = spec.task == "classification"
        self.amp_dtype, self.precision_note = autocast_dtype(spec.training.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        arrays = (dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val)
        budget = data_budget(device) if data_budget_bytes is None else data_budget_bytes
        self.data_on_device = sum(a.nbytes for a in arrays) <= budget
        self.pinned = cuda and not self.data_on_device
        self.x_train, self.y_train, self.x_val, self.y_val = (self._place(a) for a in arrays)
        # Compile the model, not the step: the optimizer's per-epoch learning rate
        # would otherwise be a guard that recompiles every epoch.
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        if spec.training.compile:
            self.forward = torch.compile(self.model)

    def _place(self, array: np.ndarray) -> torch.Tensor:
        """The array on the device, or pinned on the host when the data does not fit there."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.data_on_device:
            return tensor.to(self.device)  # once, before training: no need to overlap it
        return tensor.pin_memory() if self.pinned else tensor

    def _gather(self, x: torch.Tensor, y: torch.Tensor,
                idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch idx of (x, y) on the device."""
        if self.data_on_device:
            return x.index_select(0, idx), y.index_select(0, idx)
        # Gather into fresh pinned buffers: the caching host allocator reuses one
        # only after its copy has finished, so nothing is overwritten in flight.
        return self._to_device(torch.index_select(x, 0, idx, out=self._host_buffer(x, len(idx))),
                               torch.index_select(y, 0, idx, out=self._host_buffer(y, len(idx))))

    def _host_buffer(self, like: torch.Tensor, rows: int) -> torch.Tensor:
        return torch.empty((rows, *like.shape[1:]), dtype=like.dtype, pin_memory=self.pinned)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

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
            # Set when training stopped mid-epoch: batches done and their sums.
            "batch": self.interrupted[0] if self.interrupted else 0,
            "partial_totals": self.interrupted[1] if self.interrupted else torch.zeros(0),
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
        self.resume_batch = int(state.get("batch", 0))
        self.resume_totals = state["partial_totals"] if self.resume_batch else None
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
        order = torch.randperm(len(self.x_train), generator=gen)
        if self.data_on_device:
            order = order.to(self.device, non_blocking=True)
        bs = self.spec.training.batch_size
        for start in range(0, len(order), bs):
            yield order[start:start + bs]

    def _train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            out = self.forward(xb)
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
        skip, self.resume_batch = self.resume_batch, 0
        if self.resume_totals is not None:  # resuming mid-epoch: the sums so far
            total += self.resume_totals.to(self.device)
            self.resume_totals = None
        for batch, idx in enumerate(self._batches(epoch)):
            if batch < skip:
                continue  # trained before the interruption
            # Nothing in this loop reads a value back: no device sync per batch.
            xb, yb = self._gather(self.x_train, self.y_train, idx)
            loss, out = self._train_step(xb, yb)
            total += torch.stack([loss.double() * len(idx),
                                  *(s.double() for s in self._metric_sums(out, yb))])
            self.callbacks.on_batch_end(self, batch)
            if self.stop.is_set():
                self.interrupted = (batch + 1, total.detach().cpu())
                self.callbacks.on_interrupt(self, epoch, batch + 1)
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
            if not self.data_on_device:
                xb, yb = self._to_device(xb, yb)  # slices of pinned memory
            with self._autocast():
                out = self.forward(xb)
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
                val = self.evaluate(self.x_val, self.y_val)
                logs.update({f"val_{k}": v for k, v in val.items()})
            logs["lr"] = lr
            logs["epoch_time_s"] = time.perf_counter() - started
            self.callbacks.on_epoch_end(self, epoch + 1, logs)
            if self.stop_training:
                break
        self.callbacks.on_train_end(self, logs)
        if self.channels_last:
            # Plain weights for the exports.
            self.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        return logs
