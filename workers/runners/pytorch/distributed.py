"""A data-parallel PyTorch job's process group: rendezvous, the stop vote, reductions.

Started like `torchrun --standalone`: the leader opens a TCP store on a free port (port 0:
the kernel picks, so two jobs on one host never collide on a fixed 29500) and publishes
the port in the group's rendezvous file; the other ranks read it and connect. gloo on the
CPU, NCCL on CUDA; collectives time out after `TRAINERY_DDP_TIMEOUT_S` (minutes, not
the default 10-30), so a rank that hangs fails the group in that time.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from app.settings import get_settings
from workers.training.replicas import Replicas

HOST = "127.0.0.1"  # one host: every rank of a job runs on its leader's machine


def _publish(path: Path, port: int) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(str(port))
    os.replace(partial, path)  # readers never see half a number


def _read_port(path: Path, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the leader published no rendezvous port in {timeout_s:.0f}s")
        time.sleep(0.05)
    return int(path.read_text())


def join_group(replicas: Replicas, device: torch.device) -> None:
    """Join the job's process group (nothing for a one-process job)."""
    if not replicas.distributed:
        return
    assert replicas.rendezvous is not None
    timeout = timedelta(seconds=get_settings().ddp_timeout_s)
    if replicas.leader:
        store = dist.TCPStore(HOST, 0, replicas.procs, is_master=True, timeout=timeout,  # type: ignore[attr-defined]
                              wait_for_workers=False)
        _publish(replicas.rendezvous, store.port)
    else:
        port = _read_port(replicas.rendezvous, timeout.total_seconds())
        store = dist.TCPStore(  # type: ignore[attr-defined]
            HOST, port, replicas.procs, is_master=False, timeout=timeout)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store,
                            rank=replicas.rank, world_size=replicas.procs, timeout=timeout)


class StopVote:
    """Agree at every batch boundary whether to stop, without waiting on it.

    Each rank's stop flag is set by its own signal, maybe a batch apart; DDP needs every
    rank to stop after the same batch. Each boundary starts an all-reduce (max) of the
    local flag on a CPU gloo group and reads the one started a batch earlier, which has
    long finished: every rank sees the same votes at the same boundary, one batch late,
    with no device sync.
    """

    def __init__(self) -> None:
        self.group = dist.new_group(backend="gloo",
                                    timeout=timedelta(seconds=get_settings().ddp_timeout_s))
        self.pending: tuple[dist.Work, torch.Tensor] | None = None

    def __call__(self, local: bool) -> bool:
        decided = False
        if self.pending is not None:
            work, flag = self.pending
            work.wait()
            decided = bool(flag.item() > 0)
        flag = torch.tensor([1.0 if local else 0.0])
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        assert work is not None
        self.pending = (work, flag)
        return decided

    def settle(self) -> None:
        """Wait for the vote in flight (every rank calls it at the same point)."""
        if self.pending is not None:
            self.pending[0].wait()
            self.pending = None


def all_sum(total: torch.Tensor) -> torch.Tensor:
    """The sum of total over the ranks (a new tensor)."""
    out = total.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
