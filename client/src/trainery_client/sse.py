"""Server-sent events: a line decoder and the state of one followed job's stream.

Both are free of I/O, so the sync and async clients share them: the clients only move
lines in and sleep for the delays these objects ask for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from trainery_client._calls import job_path
from trainery_client.errors import TraineryError, WaitTimeout
from trainery_client.models import Event
from trainery_client.retry import RetryPolicy, RetryState

END_EVENT = "end"


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None
    retry_ms: int | None = None


class SSEDecoder:
    """Turns the lines of a text/event-stream into events (the WHATWG parsing rules)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self.last_event_id: str | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        """Take one line (without its line break); the event a blank line completes, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        elif field == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if self._id is not None:
            self.last_event_id = self._id
        event = None
        if self._data:
            event = ServerSentEvent(event=self._event or "message", data="\n".join(self._data),
                                    id=self._id, retry_ms=self._retry)
        self._event, self._data, self._id, self._retry = "", [], None, None
        return event


class EventFollower:
    """One job's live event stream across reconnects: what to ask for and what came back."""

    def __init__(self, job_id: str, after: int, policy: RetryPolicy,
                 timeout_s: float | None = None) -> None:
        self.job_id = job_id
        self.path = job_path(job_id, "events")
        self.last_id = after
        self.finished = False
        self.timeout_s = timeout_s
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._retry: RetryState = policy.start(idempotent=True)
        self._decoder = SSEDecoder()

    def read_timeout(self, default_s: float) -> float:
        """How long one read may wait: the usual limit, or less when the deadline is nearer."""
        if self._deadline is None:
            return default_s
        return max(min(default_s, self._deadline - time.monotonic()), 0.01)

    def check_deadline(self) -> None:
        """WaitTimeout once the caller's time is up."""
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise WaitTimeout(f"job {self.job_id} did not end within {self.timeout_s}s "
                              f"(followed up to event {self.last_id})", error="wait_timeout",
                              detail={"job_id": self.job_id, "last_event_id": self.last_id})

    def request_headers(self) -> dict[str, str]:
        """Headers for (re)connecting: resume after the last event seen."""
        self._decoder = SSEDecoder()  # a new connection starts a new stream
        return {"Accept": "text/event-stream", "Last-Event-ID": str(self.last_id),
                "Cache-Control": "no-cache"}

    def feed(self, line: str) -> Event | None:
        """One line of the stream; the job event it completes, if any (sets `finished` at `end`)."""
        self.check_deadline()  # keep-alives arrive every 15 s, so this runs even when idle
        message = self._decoder.feed(line)
        if message is None:
            return None
        if message.event == END_EVENT:
            self.finished = True
            return None
        try:
            event = Event.model_validate_json(message.data)
        except ValueError as exc:
            raise TraineryError(f"unreadable event from the server: {message.data[:200]!r}",
                                error="bad_event", detail=message.data) from exc
        self.last_id = event.id
        self._retry.reset()
        return event

    def after_error(self, error: httpx.TransportError) -> float:
        """The delay before reconnecting after the connection failed, or ConnectionFailed."""
        self.check_deadline()  # a read that timed out at the deadline ends the wait
        return self._retry.after_error(error)

    def after_response(self, response: httpx.Response) -> float | None:
        """The delay before reconnecting after a 503, or None when the response is final."""
        self.check_deadline()
        return self._retry.after_response(response)

    def after_eof(self) -> float:
        """The delay before reconnecting when the server closed the stream before `end`."""
        return self.after_error(httpx.RemoteProtocolError("event stream closed before end"))
