"""PyTorch loops for the benchmarks: the runner's loop and backend on a real store, a plain one."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from app.core.modelspec import resolve
from app.core.spec import JobSpec
from bench.jobstore import claimed_job
from bench.timing import EpochClock, EpochRecord, HoldWrites, Interleave, LoopResult
from workers import datasets
from workers.callbacks import CallbackList, EpochRecorder, standard_callbacks
from workers.datasets import Dataset
from workers.runners.pytorch.backend import TorchBackend, autocast_dtype
from workers.runners.pytorch.build import build_model
from workers.training.loop import TrainingLoop


def build(spec: JobSpec, data: Dataset) -> nn.Module:
    """The model the runner builds for spec, from the seed (as the pytorch framework module)."""
    torch.manual_seed(spec.training.seed)
    mean, std = datasets.input_stats(data.x_train)
    return build_model(resolve(spec.model, data.sample_shape), data.sample_shape,
                       data.num_outputs, mean, std)


def interleaved(spec: JobSpec, data: Dataset, model: nn.Module, device: torch.device,
                reference: Callable[[nn.Module], Iterator[EpochRecord]], reference_first: bool,
                names: tuple[str, str]) -> tuple[LoopResult, LoopResult]:
    """(a) the runner's trainer with the standard callbacks writing to a real SQLite store,
    and (b) the reference loop, their epochs taking turns; each trains a copy of model."""
    turns = Interleave(reference(copy.deepcopy(model)), before=reference_first)
    clock = EpochClock()
    with claimed_job(spec) as reporter:
        callbacks, _ = standard_callbacks(spec, reporter, has_validation=len(data.x_val) > 0)
        order = [turns, clock] if reference_first else [clock, turns]
        writes = HoldWrites(reporter)
        backend = TorchBackend(spec, copy.deepcopy(model), data, device)
        TrainingLoop(spec, backend,
                     CallbackList([writes.hold, callbacks, *order, writes.release])).fit()
    side = sum(cb.seconds for cb in callbacks.callbacks
               if isinstance(cb, EpochRecorder))
    notes = [backend.precision_note] if backend.precision_note else []
    if not backend.data_on_device:
        notes.append("the data did not fit the device budget: batches streamed from pinned memory")
    n = len(data.x_train)
    return (LoopResult.of(names[0], n, clock.epochs, side, notes,
                          background=reporter.background_seconds),
            LoopResult.of(names[1], n, turns.epochs))


def autocast(device: torch.device,
             amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Autocast to amp_dtype on device, or nothing in full precision (the reference loops')."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def minimal_epochs(spec: JobSpec, data: Dataset, model: nn.Module,
                   device: torch.device) -> Iterator[EpochRecord]:
    """A hand-written loop doing the same work: model, Adam, batch order, epoch loss/accuracy.

    It makes the same device choices as the trainer (data on the device, autocast,
    channels-last and fused Adam on CUDA), so the ratio measures the loop alone.
    """
    t = spec.training
    assert t.optimizer.name == "adam" and t.lr_schedule.name == "constant"
    cuda = device.type == "cuda"
    amp_dtype, _ = autocast_dtype(t.precision, device)
    model = model.to(device)
    if cuda and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    forward: Any = torch.compile(model) if t.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=t.optimizer.lr,
                                 weight_decay=t.optimizer.weight_decay,
                                 fused=True if cuda else None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    loss_fn = nn.CrossEntropyLoss()
    x, y, x_val, y_val = (torch.from_numpy(a).to(device)
                          for a in (data.x_train, data.y_train, data.x_val, data.y_val))

    n, bs = len(x), t.batch_size
    for epoch in range(t.epochs):
        start = time.perf_counter()
        model.train()
        gen = torch.Generator().manual_seed(t.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen).to(device)
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            with autocast(device, amp_dtype):
                out = forward(xb)
                loss = loss_fn(out.float(), yb)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            total += torch.stack([loss.detach().double() * len(idx),
                                  (out.detach().argmax(dim=1) == yb).sum().double()])
        model.eval()
        val = torch.zeros(2, dtype=torch.float64, device=device)
        vbs = max(bs, 1024)
        with torch.no_grad():
            for i in range(0, len(x_val), vbs):
                xb, yb = x_val[i:i + vbs], y_val[i:i + vbs]
                with autocast(device, amp_dtype):
                    out = forward(xb)
                val += torch.stack([loss_fn(out.float(), yb).double() * len(xb),
                                    (out.argmax(dim=1) == yb).sum().double()])
        loss_value = (total / n).tolist()[0]  # the epoch's host syncs
        val.tolist()
        yield time.perf_counter() - start, loss_value
