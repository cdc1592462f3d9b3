"""When a call is tried again: connection errors and 503s, for idempotent calls only.

A GET is idempotent, and so is POST /v1/jobs because every submit carries an
Idempotency-Key; cancel and retry are not, so they are tried once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from trainery_client.errors import ConnectionFailed


@dataclass(frozen=True)
class RetryPolicy:
    """How many tries an idempotent call gets and how long to wait between them."""

    attempts: int = 4
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    statuses: frozenset[int] = frozenset({503})
    jitter: bool = True

    def delay(self, failures: int, retry_after: str | None = None) -> float:
        """Seconds to wait after the failures-th failed try: exponential, capped, jittered."""
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff_s)
            except ValueError:
                pass  # an HTTP date; fall back to our own backoff
        base = min(self.backoff_s * 2.0 ** (failures - 1), self.max_backoff_s)
        # "Equal jitter": never less than half the backoff, so retries keep spacing out.
        return base / 2 + random.uniform(0, base / 2) if self.jitter else base

    def start(self, idempotent: bool) -> RetryState:
        """A fresh count of tries for one call."""
        return RetryState(self, idempotent)


NO_RETRY = RetryPolicy(attempts=1)


class RetryState:
    """The tries of one call so far; each method answers "wait this long and try again" or stops."""

    def __init__(self, policy: RetryPolicy, idempotent: bool) -> None:
        self.policy = policy
        self.idempotent = idempotent
        self.failures = 0

    def _may_retry(self) -> bool:
        self.failures += 1
        return self.idempotent and self.failures < self.policy.attempts

    def after_error(self, error: httpx.TransportError) -> float:
        """The delay before the next try after a connection error, or ConnectionFailed."""
        if not self._may_retry():
            tries = f" after {self.failures} tries" if self.failures > 1 else ""
            raise ConnectionFailed(f"could not reach the server{tries}: {error!r}",
                                   error="connection_failed", detail=str(error)) from error
        return self.policy.delay(self.failures)

    def after_response(self, response: httpx.Response) -> float | None:
        """The delay before the next try if the response says "try again", else None."""
        if response.status_code not in self.policy.statuses or not self._may_retry():
            return None
        return self.policy.delay(self.failures, response.headers.get("retry-after"))

    def reset(self) -> None:
        """Forget the failures so far (a long stream made progress)."""
        self.failures = 0
