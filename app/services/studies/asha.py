"""Asynchronous successive halving (Li et al., 2018): which paused trial to promote, if any.

A trial trains to its rung's epoch budget and pauses there (its job succeeds, so its model
can be downloaded). When a slot frees up, the controller asks promotion() first: a trial
paused at rung k is promoted to k + 1 once it ranks in the top 1/reduction_factor of all
trials that reached rung k (by the objective at rung k's epoch). Only when nobody can be
promoted does a new trial start. Once the study can start no new trial, the quota rounds up
instead of down, so a small study still trains at least one trial to the top rung.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RungTrial:
    """What ASHA needs of a trial: where it stands and its objective at each rung reached."""

    number: int
    state: str  # running | paused | completed | pruned | failed | cancelled
    rung: int
    rung_values: dict[int, float]  # rung epoch -> objective at that epoch


def promotion(trials: list[RungTrial], rungs: list[int], reduction_factor: int, mode: str,
              exhausted: bool) -> tuple[int, int] | None:
    """(trial number, rung to train to) of the next promotion, highest rung first, or None."""
    for k in reversed(range(len(rungs) - 1)):
        epoch = rungs[k]
        reached = [t for t in trials if epoch in t.rung_values]
        waiting = {t.number for t in reached if t.state == "paused" and t.rung == k}
        if not waiting:
            continue
        quota = (math.ceil if exhausted else math.floor)(len(reached) / reduction_factor)
        sign = -1.0 if mode == "max" else 1.0
        ranked = sorted(reached, key=lambda t: (sign * t.rung_values[epoch], t.number))
        for t in ranked[:quota]:
            if t.number in waiting:
                return t.number, k + 1
    return None
