"""The PyTorch backend of the training loop: model, optimizer, data on the device, checkpoints."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from app.core.spec import JobSpec, OptimizerSpec
from workers.datasets import Dataset
from workers.runners.pytorch.distributed import StopVote, all_sum
from workers.training.loop import LoopState
from workers.training.replicas import ONE, Replicas

# The share of the GPU's free memory the dataset may take to be kept there whole;
# a larger one stays in pinned host memory and is copied over a batch at a time.
DEVICE_DATA_SHARE = 0.5


def resolve_device(device: str) -> torch.device:
    """The torch device for the one the worker's device check verified ("cpu" or "cuda:N").

    The worker pins its GPU with CUDA_VISIBLE_DEVICES, so "cuda:N" is this process's
    first visible GPU. A verified GPU that torch cannot see is an error, never a
    silent fall back to the CPU.
    """
    if not device.startswith("cuda"):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"the worker verified {device}, but this process sees no CUDA device")
    return torch.device("cuda")


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
    losses: dict[str, type[nn.Module]] = {"cross_entropy": nn.CrossEntropyLoss,
                                          "mse": nn.MSELoss, "mae": nn.L1Loss,
                                          "huber": nn.HuberLoss}
    return losses[name]()


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




class TorchBackend:
    """The loop's PyTorch side: tensors kept on the device, sums read once per epoch.

    Data larger than `data_budget_bytes` (default: data_budget) stays in pinned host
    memory instead and each batch is gathered there and copied without blocking.

    Data-parallel (replicas.distributed): the model is wrapped in DistributedDataParallel;
    every rank draws the same (seed, epoch) order, cuts each global batch of
    `training.batch_size` into one contiguous share per rank, and scales its loss so that
    DDP's mean of the ranks' gradients is the global batch's mean gradient (exact for an
    uneven last batch too). Sums and the validation split are reduced across ranks at
    the epoch's one host sync, so every rank sees the logs one process would.
    """

    def __init__(self, spec: JobSpec, model: nn.Module, dataset: Dataset, device: torch.device,
                 data_budget_bytes: int | None = None, replicas: Replicas = ONE) -> None:
        self.spec, self.dataset, self.device, self.replicas = spec, dataset, device, replicas
        self.n_train, self.n_val = len(dataset.x_train), len(dataset.x_val)
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
        self.vote: StopVote | None = None
        if replicas.distributed:
            self.forward = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index or 0] if cuda else None)
            self.vote = StopVote()
        # This rank's rows of the validation split (all of it in one process).
        self.val_rows = torch.tensor_split(torch.arange(self.n_val), replicas.procs)[replicas.rank]
        # Evaluation calls the plain module: DDP's forward would sync buffers, and the
        # ranks' validation shares may differ by a batch.
        self.evaluate_forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        if spec.training.compile:
            self.forward = torch.compile(self.forward)
            self.evaluate_forward = (self.forward if not replicas.distributed
                                     else torch.compile(self.model))

    def describe(self) -> tuple[str, dict[str, Any]]:
        """Where and with what it trains, for the job's events."""
        where = f"{self.device} with torch {torch.__version__}"
        details: dict[str, Any] = {"device": str(self.device),
                                   "cpu_threads": torch.get_num_threads()}
        if self.replicas.distributed:
            where += (f", DistributedDataParallel over {self.replicas.procs} processes "
                      f"({torch.distributed.get_backend()})")
            details["replicas"] = self.replicas.procs
        return where, details

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

    def save(self, state: LoopState) -> bytes:
        """A torch.save of the model, optimizer, scaler and RNG state, and state."""
        payload = {
            "epoch": state.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "callbacks": state.callbacks,
            # Set when training stopped mid-epoch: batches done and their sums.
            "batch": state.batch,
            "partial_totals": state.partial_totals if state.batch else torch.zeros(0),
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    def load(self, payload: bytes) -> LoopState:
        """Restore what save stored; the loop's part of it."""
        state = torch.load(io.BytesIO(payload), map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"].cpu())
        if state["cuda_rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        batch = int(state.get("batch", 0))
        return LoopState(int(state["epoch"]), state["callbacks"], batch,
                         state["partial_totals"] if batch else None)

    def snapshot_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore_weights(self, snapshot: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(snapshot)

    # -- what the loop calls -------------------------------------------------

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def begin_training(self) -> None: ...

    def should_stop(self, requested: bool) -> bool:
        return requested if self.vote is None else self.vote(requested)

    def end_training(self) -> None:
        if self.vote is not None:
            self.vote.settle()
        if self.channels_last:
            # Plain weights for the exports.
            self.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, int]]:
        """(this rank's indices, the global batch's size) in an order from (seed, epoch)
        only, so a resumed run sees the same batches an uninterrupted one would have; the
        model is in training mode."""
        self.model.train()
        gen = torch.Generator().manual_seed(self.spec.training.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n_train, generator=gen)
        if self.data_on_device:
            order = order.to(self.device, non_blocking=True)
        bs = self.spec.training.batch_size
        procs, rank = self.replicas.procs, self.replicas.rank
        for start in range(0, len(order), bs):
            batch = order[start:start + bs]
            yield (batch if procs == 1 else torch.tensor_split(batch, procs)[rank]), len(batch)

    def zeros(self) -> torch.Tensor:
        return torch.zeros(1 + len(self.metrics), device=self.device, dtype=torch.float64)

    def _global(self, total: torch.Tensor) -> torch.Tensor:
        return all_sum(total) if self.replicas.distributed else total

    def to_host(self, total: torch.Tensor) -> torch.Tensor:
        """The sums over every rank (what the leader's checkpoint keeps)."""
        return self._global(total.detach()).cpu()

    def to_device(self, saved: torch.Tensor) -> torch.Tensor:
        """A checkpoint's sums back: on the leader, so the ranks' sum is counted once."""
        saved = saved.to(self.device)
        return saved if self.replicas.leader else torch.zeros_like(saved)

    def values(self, total: torch.Tensor) -> list[float]:
        return self._global(total).tolist()

    def _sums(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[loss * n, metric sums...] for one batch, in float64."""
        sums = [loss.double() * len(y)]
        for name in self.metrics:
            if name == "accuracy":
                sums.append((out.argmax(dim=1) == y).sum().double())
            elif name == "mae":
                sums.append((out.float() - y).abs().mean(dim=1).sum().double())
            else:  # mse
                sums.append(((out.float() - y) ** 2).mean(dim=1).sum().double())
        return torch.stack(sums)

    def train_batch(self, batch: tuple[torch.Tensor, int]) -> torch.Tensor:
        idx, global_size = batch
        xb, yb = self._gather(self.x_train, self.y_train, idx)
        with self._autocast():
            out = self.forward(xb)
            loss = self.loss_fn(out.float(), yb)
        objective = loss
        if self.replicas.distributed:
            # DDP averages the ranks' gradients; weighting each share's mean by its size
            # makes that average the global batch's mean (an empty share adds zeros).
            objective = (loss * (len(idx) * self.replicas.procs / global_size) if len(idx)
                         else out.sum() * 0.0)
        self.scaler.scale(objective).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not len(idx):
            return self.zeros()  # an empty share: its mean loss is nan, its sums are 0
        return self._sums(loss.detach(), out.detach(), yb)

    @torch.no_grad()
    def evaluate(self) -> torch.Tensor:
        self.model.eval()
        total = self.zeros()
        bs = max(self.spec.training.batch_size, 1024)
        first, rows = (int(self.val_rows[0]), len(self.val_rows)) if len(self.val_rows) else (0, 0)
        for start in range(first, first + rows, bs):
            end = min(start + bs, first + rows)
            xb, yb = self.x_val[start:end], self.y_val[start:end]
            if not self.data_on_device:
                xb, yb = self._to_device(xb, yb)  # slices of pinned memory
            with self._autocast():
                out = self.evaluate_forward(xb)
            total += self._sums(self.loss_fn(out.float(), yb), out, yb)
        return total
