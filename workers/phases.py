"""A runner's start phases: when each step between the claim and the first optimizer step ended.

The runner process marks them as it goes (wall-clock seconds, `time.time()`); they are
reported as seconds since the attempt's claim (`jobs.started_at`, written by the
worker at the claim) in the job's "training on" event and in its "first optimizer
step" event, so that a slow start explains itself. `queued_s` is the claim's distance
from the job's last `queued` state event (negative), so queued -> first step is
`first_step_s - queued_s`. All clocks are the hosts' wall clocks: across machines the
figures are only as good as their clock sync.
"""

from __future__ import annotations

import os
import time
from typing import Any

from workers.callbacks import Callback, Trainer

# In order; a phase not reached (or not measured) is left out of the report.
ORDER = ("spawned", "imported", "forked", "runner_started", "framework_ready", "data_ready",
         "model_ready", "first_step")


class StartPhases:
    """This process's marks; one runner process runs one job attempt, so one set per process."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.warm = False  # the process had imported its framework before its job arrived
        self.claimed_at: float | None = None
        self.queued_at: float | None = None

    def mark(self, name: str, at: float | None = None) -> None:
        """Record when phase name ended (its first mark wins)."""
        self.marks.setdefault(name, time.time() if at is None else at)

    def report(self) -> dict[str, Any]:
        """The phases as seconds since the claim (or absolute times if the claim is unknown)."""
        origin = self.claimed_at or 0.0
        out: dict[str, Any] = {"warm": self.warm, "pid": os.getpid(),
                               "since": "claim" if self.claimed_at else "epoch"}
        if self.claimed_at and self.queued_at:
            out["queued_s"] = round(self.queued_at - origin, 4)
        for name in ORDER:
            if name in self.marks:
                out[f"{name}_s"] = round(self.marks[name] - origin, 4)
        return out


PHASES = StartPhases()


class FirstStep(Callback):
    """Marks the first optimizer step and reports the start phases in an event."""

    name = "first_step"

    def __init__(self, reporter: Any) -> None:
        self.reporter = reporter
        self.done = False

    def on_batch_end(self, trainer: Trainer, batch: int) -> None:
        if self.done:
            return
        self.done = True
        PHASES.mark("first_step")
        report = PHASES.report()
        since = "the claim" if report["since"] == "claim" else "the epoch"
        self.reporter.event(f"first optimizer step {report['first_step_s']:.2f}s after {since} "
                            f"({'warm' if PHASES.warm else 'cold'} runner)", {"start": report})
