"""Trainery's runner against a tuned standalone PyTorch loop on the airbench preset (GPU).

(a) the runner's training loop with the standard callbacks writing metrics and
checkpoints to a real SQLite store, training the `airbench` preset, against (b) a
hand-written airbench-style loop of the same network as its own nn.Module: data
normalised once and kept on the device as NCHW channels-last, bf16 autocast, fused
SGD-Nesterov, optionally torch.compile, no host sync inside an epoch. Both train on
the same synthetic 32x32x3 data with the same batch size and epochs, their epochs
taking turns (see bench.loop_overhead). The target is (a) within 10% of (b).
--quick runs a small size that a CPU finishes in a few minutes.

    python -m bench.airbench                 # on a CUDA machine
    python -m bench.airbench --quick         # anywhere
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from app.core.modelspec import AIRBENCH_WIDTHS
from app.core.spec import JobSpec
from bench import torch_loops
from bench.timing import EpochRecord, compare, load_average, rounds
from workers import datasets
from workers.datasets import Dataset
from workers.runners.pytorch.backend import autocast_dtype

TARGET_RATIO = 0.90
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.airbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--samples", type=int, default=55_556,
                   help="synthetic samples, 10%% held out (default: 50k to train, as CIFAR-10)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--rounds", type=int, default=2, help="runs of each loop, alternating")
    p.add_argument("--quick", action="store_true",
                   help="a small run for a CPU: 1200 samples, 3 epochs, batch 128, 2 rounds")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.epochs, args.batch_size, args.rounds = 1200, 3, 128, 2
    return args


def job_spec(args: argparse.Namespace) -> JobSpec:
    return JobSpec.model_validate({
        "name": "bench-airbench", "framework": "pytorch",
        "dataset": {"builtin": "synthetic", "n_samples": args.samples,
                    "sample_shape": [32, 32, 3], "num_classes": 10, "validation_split": 0.1},
        "model": {"preset": "airbench"},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size,
                     "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM,
                                   "nesterov": True, "weight_decay": WEIGHT_DECAY},
                     "precision": args.precision, "compile": args.compile},
        "checkpoint": {"every_epochs": 1, "keep_last": 2},
    })


class AirbenchNet(nn.Sequential):
    """The airbench preset's network written directly in PyTorch, as a standalone script would."""

    def __init__(self, classes: int = 10) -> None:
        layers: list[nn.Module] = [nn.Conv2d(3, 24, 3, padding=1), nn.GELU()]
        width = 24
        for out in AIRBENCH_WIDTHS:
            layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.MaxPool2d(2),
                       nn.BatchNorm2d(out), nn.GELU(),
                       nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.GELU()]
            width = out
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(width, classes)]
        super().__init__(*layers)


def tuned_epochs(spec: JobSpec, data: Dataset, device: torch.device) -> Iterator[EpochRecord]:
    """The tuned loop: inputs normalised once, channels-last on the device, no per-batch sync."""
    t = spec.training
    cuda = device.type == "cuda"
    amp_dtype, _ = autocast_dtype(t.precision, device)
    torch.manual_seed(t.seed)
    model = AirbenchNet(data.num_classes).to(device)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    forward: Any = torch.compile(model) if t.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True,
                                weight_decay=WEIGHT_DECAY, fused=True if cuda else None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    loss_fn = nn.CrossEntropyLoss()
    if cuda:
        torch.backends.cudnn.benchmark = True
    mean, std = (torch.from_numpy(a) for a in datasets.input_stats(data.x_train))

    def images(array: np.ndarray) -> torch.Tensor:
        # NHWC -> an NCHW view that is channels-last in memory, normalised once.
        x: torch.Tensor = ((torch.from_numpy(array) - mean) / std).to(device)
        return x.permute(0, 3, 1, 2)

    x, x_val = images(data.x_train), images(data.x_val)
    y, y_val = torch.from_numpy(data.y_train).to(device), torch.from_numpy(data.y_val).to(device)

    n, bs = len(x), t.batch_size
    for _ in range(t.epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n, device=device)
        total = torch.zeros((), dtype=torch.float32, device=device)
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            with torch_loops.autocast(device, amp_dtype):
                loss = loss_fn(forward(x[idx]).float(), y[idx])
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            total += loss.detach() * len(idx)
        model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=device)
        with torch.no_grad(), torch_loops.autocast(device, amp_dtype):
            for i in range(0, len(x_val), 1024):
                correct += (forward(x_val[i:i + 1024]).argmax(1) == y_val[i:i + 1024]).sum()
        loss = total.item() / n  # the epoch's host syncs
        correct.item()
        yield time.perf_counter() - start, loss


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    spec = job_spec(args)
    data = datasets.load(spec.dataset)
    gpu = f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""
    print(f"== airbench: {len(data.x_train)} training samples 32x32x3, {args.epochs} epochs x "
          f"{args.rounds} rounds, batch {args.batch_size}, {args.precision}"
          f"{', compiled' if args.compile else ''}; torch {torch.__version__} on {device}{gpu}")
    print(f"machine: {platform.platform()}, python {platform.python_version()}; "
          f"load average {load_average()}")
    model = torch_loops.build(spec, data)
    runner, reference = rounds(args.rounds, lambda runner_first: torch_loops.interleaved(
        spec, data, model, device, lambda _twin: tuned_epochs(spec, data, device),
        reference_first=not runner_first,
        names=("(a) Trainery runner", "(b) tuned standalone loop")))
    print(f"final training loss: (a) {runner.runs[-1].losses[-1]:.4f}, "
          f"(b) {reference.runs[-1].losses[-1]:.4f}")
    compare(runner, reference, TARGET_RATIO, side_target=None)
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
