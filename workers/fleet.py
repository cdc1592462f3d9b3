"""`trainery worker`: one Celery worker process per GPU (or CPU slot), restarted when it dies.

The parent never imports a framework: it asks nvidia-smi for the GPUs and pins each
child with CUDA_VISIBLE_DEVICES before the child imports anything.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.settings import Settings, get_settings

log = logging.getLogger("trainery.fleet")

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
SHUTDOWN_WAIT_S = 120


@dataclass(frozen=True)
class Gpu:
    index: str
    name: str


@dataclass
class Slot:
    """One worker process to keep running."""

    name: str
    env: dict[str, str]
    queues: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    history: list[float] = field(default_factory=list)


def discover_gpus(settings: Settings, smi: str = "nvidia-smi") -> list[Gpu]:
    """TRAINERY_GPUS wins; else nvidia-smi's list; else none."""
    if settings.gpus is not None:
        return [Gpu(i.strip(), "gpu") for i in settings.gpus.split(",") if i.strip()]
    try:
        out = subprocess.run([smi, "--query-gpu=index,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        index, _, name = line.partition(",")
        if index.strip().isdigit():
            gpus.append(Gpu(index.strip(), name.strip()))
    return gpus


def pool_name(gpu_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'gpu.h100': the pool a job can name in resources.queue."""
    tokens = [t for t in re.split(r"[\s\-_]+", gpu_name.lower())
              if t and t not in ("nvidia", "geforce", "tesla", "quadro")]
    for i, token in enumerate(tokens):
        if any(c.isdigit() for c in token):
            if token.isdigit() and i > 0 and tokens[i - 1].isalpha():
                token = tokens[i - 1] + token  # "RTX 4090" -> rtx4090
            return f"gpu.{token}"
    return "gpu"


def plan(settings: Settings, gpus: list[Gpu], hostname: str,
         cpu_count: int | None = None) -> list[Slot]:
    """The worker processes for this machine: names, pinning, queues and CPU threads."""
    extra = [q.strip() for q in settings.worker_queues.split(",") if q.strip()]
    count = len(gpus) or settings.cpu_slots
    # Each worker's runner gets an equal share of the cores, unless set explicitly.
    threads = settings.runner_threads or max(1, (cpu_count or os.cpu_count() or 1) // count)
    share = {"TRAINERY_RUNNER_THREADS": str(threads)}
    slots = []
    for gpu in gpus:
        queues = ["gpu", pool_name(gpu.name), "default", *extra]
        slots.append(Slot(f"gpu{gpu.index}@{hostname}",
                          {"CUDA_VISIBLE_DEVICES": gpu.index, "TRAINERY_SLOT_DEVICE": gpu.index,
                           **share},
                          list(dict.fromkeys(queues))))
    if not gpus:
        takes_gpu = ["gpu"] if settings.cpu_takes_gpu_jobs else []
        for i in range(settings.cpu_slots):
            slots.append(Slot(f"cpu{i}@{hostname}", {"CUDA_VISIBLE_DEVICES": "", **share},
                              list(dict.fromkeys(["default", *takes_gpu, *extra]))))
    return slots


def celery_argv(slot: Slot, settings: Settings) -> list[str]:
    """The command line of one worker process."""
    queues = ",".join(f"{settings.queue_prefix}.{q}" for q in slot.queues)
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues,
            "--pool", "solo", "--concurrency", "1", "--prefetch-multiplier", "1",
            "--without-gossip", "--without-mingle", "-n", slot.name, "--loglevel", "INFO"]


class Fleet:
    """Starts the slots, restarts any that die, and stops them all gracefully on SIGTERM."""

    def __init__(self, settings: Settings, slots: list[Slot],
                 argv: Callable[[Slot, Settings], list[str]] = celery_argv) -> None:
        self.settings, self.slots, self.argv = settings, slots, argv
        self.stopping = False

    def _start(self, slot: Slot) -> None:
        env = {**os.environ, **slot.env, "TRAINERY_WORKER_NAME": slot.name}
        slot.proc = subprocess.Popen(self.argv(slot, self.settings), env=env)
        log.info("started %s (pid %d) for queues %s with CUDA_VISIBLE_DEVICES=%r", slot.name,
                 slot.proc.pid, ",".join(slot.queues), slot.env["CUDA_VISIBLE_DEVICES"])

    def poll_once(self) -> None:
        """Restart every slot whose process has exited, with a growing backoff."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                continue
            if slot.proc is not None:
                log.warning("%s exited with %s; restarting", slot.name, slot.proc.returncode)
                slot.history = [t for t in slot.history if now - t < 300] + [now]
                slot.next_start = now + RESTART_BACKOFF_S[min(len(slot.history),
                                                              len(RESTART_BACKOFF_S)) - 1]
                slot.restarts += 1
                slot.proc = None
            if now >= slot.next_start:
                self._start(slot)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Ask every worker to hand back its job and exit; wait for them."""
        self.stopping = True
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(sig)
        deadline = time.monotonic() + SHUTDOWN_WAIT_S
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                slot.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                slot.proc.kill()

    def run(self) -> int:
        def on_signal(signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not self.stopping:
            self.poll_once()
            time.sleep(0.5)
        log.info("stopping %d worker(s)", len(self.slots))
        self.stop()
        return 0


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fleet %(message)s")
    settings = get_settings()
    gpus = discover_gpus(settings)
    slots = plan(settings, gpus, socket.gethostname())
    log.info("%s", f"{len(gpus)} GPU(s): one worker each" if gpus
             else f"no GPU found: {len(slots)} CPU worker(s)")
    return Fleet(settings, slots).run()


if __name__ == "__main__":
    sys.exit(main())
