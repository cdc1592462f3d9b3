"""Where one runner process stands in a data-parallel job: its slots, its rank, its peers.

A job on N slots trains data-parallel. PyTorch runs one process per slot (rank 0 is
the leader); Keras runs one process over all N devices (MirroredStrategy). The
supervisor passes this as the runner's arguments after DEVICE: `SLOTS RANK PROCS
RENDEZVOUS` (a file where the leader publishes the free port of its TCP store).
Only the leader writes metrics, checkpoints, events, models and the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Replicas:
    """This process's share of the job: slots (devices in all), rank among procs processes."""

    slots: int = 1
    rank: int = 0
    procs: int = 1
    rendezvous: Path | None = None

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Several processes train together (PyTorch DDP)."""
        return self.procs > 1

    def argv(self) -> list[str]:
        return [str(self.slots), str(self.rank), str(self.procs), str(self.rendezvous or "")]

    @classmethod
    def parse(cls, args: list[str]) -> Replicas:
        """From the runner arguments after DEVICE (none: one slot, one process)."""
        if not args:
            return cls()
        slots, rank, procs, rendezvous = args
        return cls(int(slots), int(rank), int(procs), Path(rendezvous) if rendezvous else None)


ONE = Replicas()  # a job on one slot: one process, the leader
