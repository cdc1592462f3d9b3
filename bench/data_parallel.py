"""Data-parallel scaling: the airbench preset as a 1-slot job and as an N-slot job through a
real stack (API, one Celery worker per slot of one host), on GPUs or on CPU slots.

Prints each job's training throughput (samples/s from the median `epoch_time_s` of the
epochs after the first, which pays for start-up) and the N-slot job's scaling
efficiency: its throughput over N times the 1-slot job's. On CPU slots the figures
only show that the path works (the slots share the cores); on a machine with N GPUs
they are the scaling figures for docs/benchmarks.md.

    python -m bench.data_parallel                    # every visible GPU (nvidia-smi)
    python -m bench.data_parallel --cpu-slots 2 --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from app.db import migrate
from app.settings import get_settings
from bench.stack import Stack
from workers.fleet import discover_gpus


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.data_parallel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-slots", type=int, default=0,
                   help="use N CPU slots instead of the GPUs (a check that the path works)")
    p.add_argument("--samples", type=int, default=55_556)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=1024, help="the global batch")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--quick", action="store_true",
                   help="a small run: 1200 samples, 3 epochs, batch 128, fp32")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.epochs, args.batch_size, args.precision = 1200, 3, 128, "fp32"
    return args


def spec(args: argparse.Namespace, gpus: int) -> dict[str, Any]:
    return {
        "name": f"bench-ddp-{gpus}", "framework": "pytorch",
        "dataset": {"builtin": "synthetic", "n_samples": args.samples,
                    "sample_shape": [32, 32, 3], "num_classes": 10, "validation_split": 0.1},
        "model": {"preset": "airbench"},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size,
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
                     "precision": args.precision},
        "resources": {"gpus": gpus, "max_runtime_s": 3600},
    }


def throughput(stack: Stack, job_id: str, n_train: int) -> float:
    """Training samples per second over the epochs after the first."""
    rows = stack.client.get(f"/v1/jobs/{job_id}/metrics").json()
    times = [r["epoch_time_s"] for r in rows[1:]] or [rows[0]["epoch_time_s"]]
    return float(n_train / statistics.median(times))


def main(argv: list[str]) -> int:
    args = parse(argv)
    gpus = [g.index for g in discover_gpus(get_settings())]
    slots = args.cpu_slots or len(gpus)
    if slots < 2:
        raise SystemExit(f"{slots} slot(s): scaling needs at least 2 (GPUs, or --cpu-slots N)")
    devices = [""] * slots if args.cpu_slots else gpus
    n_train = args.samples - int(args.samples * 0.1)
    print(f"== data-parallel airbench: {n_train} training samples, {args.epochs} epochs, global "
          f"batch {args.batch_size}, {args.precision}, on "
          + (f"{slots} CPU slots" if args.cpu_slots else f"GPUs {','.join(gpus)}"))
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        stack = Stack(f"sqlite:///{Path(tmp) / 'trainery.db'}", Path(tmp))
        migrate(stack.database_url)
        try:
            stack.start_api()
            for i, device in enumerate(devices):
                stack.start_worker(f"s{i}", env={"CUDA_VISIBLE_DEVICES": device,
                                                 "TRAINERY_SLOT_DEVICE": device})
            figures = {}
            for n in (1, slots):  # one after the other: each has the machine to itself
                job = stack.submit(spec(args, n))
                done = stack.wait(job["id"], timeout=3600)
                if done["status"] != "succeeded":
                    raise SystemExit(f"the {n}-slot job ended {done['status']}: {done['error']}")
                figures[n] = throughput(stack, job["id"], n_train)
                print(f"{n} slot(s): {figures[n]:,.0f} samples/s")
        finally:
            stack.stop()
    efficiency = figures[slots] / (slots * figures[1])
    print(f"scaling: x{figures[slots] / figures[1]:.2f} on {slots} slots, "
          f"efficiency {efficiency:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
