"""Polling a job or a study until it ends: the pace and the deadline, shared by both clients."""

from __future__ import annotations

import time

from trainery_client.errors import WaitTimeout
from trainery_client.models import ApiModel


class Waiter:
    """Polls start quick and slow down to `max_interval_s`; past the deadline, WaitTimeout."""

    def __init__(self, timeout_s: float | None, max_interval_s: float) -> None:
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.max_interval_s = max_interval_s
        self._interval = min(0.2, max_interval_s)

    def next_delay(self, still: str, item: ApiModel) -> float:
        """How long to sleep before polling again; past the deadline, WaitTimeout saying
        `still` (what the item is still doing) with the item as its detail."""
        delay = self._interval
        self._interval = min(self._interval * 1.5, self.max_interval_s)
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"{still} after {self.timeout_s}s", error="wait_timeout",
                                  detail=item.to_json())
            delay = min(delay, left)
        return delay
