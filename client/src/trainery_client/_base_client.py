"""Everything both clients do, written once: requests, answers, errors, retries, streams.

Each call is a plan (see `_effects`): `Client` and `AsyncClient` differ only in how they
perform its effects and how they hand results over (a value or iterator, or awaited).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from trainery_client import _calls
from trainery_client._calls import Call
from trainery_client._effects import Close, Emit, Next, Plan, ReadBody, Reader, Send, Sleep
from trainery_client.documents import load_document
from trainery_client.download import REDIRECTS, Expected, ModelWriter
from trainery_client.errors import error_from_response
from trainery_client.models import (
    Dataset,
    Event,
    Job,
    JobPage,
    ModelFile,
    Study,
    StudyPage,
    StudySnapshot,
)
from trainery_client.retry import RetryPolicy, RetryState
from trainery_client.sse import EventFollower
from trainery_client.waiting import Waiter

T = TypeVar("T")
HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)
PageT = TypeVar("PageT", JobPage, StudyPage)
CHUNK_BYTES = 1 << 20


class BaseClient(Generic[HttpT]):
    """The settings and the plans of every call; subclasses say which httpx client sends them."""

    _http_class: type[httpx.Client] | type[httpx.AsyncClient]

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout: float = 30.0, retry: RetryPolicy | None = None,
                 stream_read_timeout: float = 60.0, transport: Any = None) -> None:
        """url and token default to TRAINERY_URL and TRAINERY_TOKEN; transport is httpx's."""
        self.url = _calls.base_url(url)
        self._http: HttpT = self._http_class(  # type: ignore[assignment]
            base_url=self.url, headers=_calls.default_headers(token), timeout=timeout,
            transport=transport)
        self._retry = retry or RetryPolicy()
        self._timeout, self._stream_read_timeout = timeout, stream_read_timeout

    def _build(self, call: Call[Any]) -> httpx.Request:
        """The httpx request for a call (base URL, default headers and timeout added)."""
        call.rewind()  # a retry sends the files whole again
        return self._http.build_request(call.method, call.path, params=call.params,
                                        json=call.json, headers=call.headers, files=call.files,
                                        data=call.data)

    # -- one request ---------------------------------------------------------

    def _response(self, call: Call[Any]) -> Plan[httpx.Response]:
        """Send the call, retrying as the policy allows; the success, or the typed error."""
        retry = self._retry.start(call.idempotent)
        while True:
            try:
                response = yield Send(self._build(call))
            except httpx.TransportError as exc:
                yield Sleep(retry.after_error(exc))
                continue
            if response.is_success:
                return response  # type: ignore[no-any-return]
            delay = retry.after_response(response)
            if delay is None:
                raise error_from_response(response)
            yield Sleep(delay)

    def _call(self, call: Call[T]) -> Plan[T]:
        """The call's parsed answer."""
        return call.parse((yield from self._response(call)))

    def _streamed(self, request: httpx.Request,
                  consume: Callable[[httpx.Response], Plan[T]]) -> Plan[T]:
        """Send a request streamed and let consume(response) read it; closed however it ends."""
        response = yield Send(request, stream=True)
        try:
            result = yield from consume(response)
        except Exception:
            yield Close(response)
            raise
        yield Close(response)
        return result

    def _error_delay(self, response: httpx.Response,
                     retry: RetryState | EventFollower) -> Plan[float]:
        """For a failed streamed response: the delay before trying again, or its typed error."""
        yield ReadBody(response)
        delay = retry.after_response(response)
        if delay is None:
            raise error_from_response(response)
        return delay

    # -- calls that loop -------------------------------------------------------

    def _pages(self, page: Callable[[str | None], Call[PageT]]) -> Plan[None]:
        """Emit every item of every page, asking page(cursor) for each in turn."""
        cursor = None
        while True:
            found = yield from self._call(page(cursor))
            for item in found.data:
                yield Emit(item)
            if not found.next_cursor:
                return
            cursor = found.next_cursor

    def _list(self, status: str | None, page_size: int) -> Plan[None]:
        return self._pages(lambda cursor: _calls.list_jobs(status, page_size, cursor))

    def _studies(self, state: str | None, page_size: int) -> Plan[None]:
        return self._pages(lambda cursor: _calls.list_studies(state, page_size, cursor))

    def _events(self, job_id: str, after: int) -> Plan[list[Event]]:
        found: list[Event] = []
        while batch := (yield from self._call(_calls.events(job_id, after))):
            found.extend(batch)
            after = batch[-1].id
        return found

    def _wait(self, job_id: str, timeout: float | None, poll_s: float) -> Plan[Job]:
        waiter = Waiter(timeout, poll_s)
        while not (job := (yield from self._call(_calls.get_job(job_id)))).is_terminal:
            yield Sleep(waiter.next_delay(f"job {job.id} is still {job.status}", job))
        return job

    def _create_study(self, request: Mapping[str, Any] | str | os.PathLike[str]) -> Plan[Study]:
        if not isinstance(request, Mapping):
            request = load_document(request)
        return (yield from self._call(_calls.create_study(request)))

    def _follow_study(self, study_id: str, timeout: float | None, poll_s: float) -> Plan[None]:
        """Emit the study with its trials whenever they changed, until it has ended."""
        waiter = Waiter(timeout, poll_s)
        last: dict[str, Any] | None = None
        while True:
            study = yield from self._call(_calls.get_study(study_id))
            trials = yield from self._call(_calls.study_trials(study_id))
            snapshot = StudySnapshot(study=study, trials=trials)
            if snapshot.to_json() != last:
                last = snapshot.to_json()
                yield Emit(snapshot)
            if study.is_terminal:
                return
            yield Sleep(waiter.next_delay(f"study {study.id} is still {study.state}", study))

    def _wait_study(self, study_id: str, timeout: float | None, poll_s: float) -> Plan[Study]:
        waiter = Waiter(timeout, poll_s)
        while not (study := (yield from self._call(_calls.get_study(study_id)))).is_terminal:
            yield Sleep(waiter.next_delay(f"study {study.id} is still {study.state}", study))
        return study

    def _upload(self, path: str | os.PathLike[str], form: Mapping[str, object]) -> Plan[Dataset]:
        path = Path(path)
        with path.open("rb") as file:
            return (yield from self._call(_calls.upload_dataset(file, path.name, form)))

    # -- streams -----------------------------------------------------------------

    def _follow(self, job_id: str, after: int, timeout: float | None) -> Plan[None]:
        """Emit the job's events live until `end`, reconnecting after the last one seen."""
        follower = EventFollower(job_id, after, self._retry, timeout)
        while not follower.finished:
            # The server sends a keep-alive every 15 s: a longer silence means a dead link.
            read = follower.read_timeout(self._stream_read_timeout)
            request = self._http.build_request(
                "GET", follower.path, headers=follower.request_headers(),
                timeout=httpx.Timeout(self._timeout, read=read))
            try:
                delay = yield from self._streamed(request, lambda r: self._events_of(r, follower))
            except httpx.TransportError as exc:
                delay = follower.after_error(exc)
            if delay is not None:
                yield Sleep(delay)

    def _events_of(self, response: httpx.Response, follower: EventFollower) -> Plan[float | None]:
        if not response.is_success:
            return (yield from self._error_delay(response, follower))
        lines = yield Reader(response)
        while (line := (yield Next(lines))) is not None:
            event = follower.feed(line)
            if event is not None:
                yield Emit(event)
            if follower.finished:
                return None
        return follower.after_eof()

    def _download(self, job_id: str, path: str | os.PathLike[str] | None,
                  format: str | None) -> Plan[ModelFile]:
        """Fetch the model to disk, verified against the API's sha256; retried like a GET.

        Every try starts at the API, so a retry gets a fresh presigned URL, never an
        expired one.
        """
        call = _calls.model_download(job_id, format)
        retry = self._retry.start(call.idempotent)
        while True:
            try:
                outcome = yield from self._streamed(self._build(call),
                                                    lambda r: self._fetch(r, path, retry))
            except httpx.TransportError as exc:
                outcome = retry.after_error(exc)
            if isinstance(outcome, ModelFile):
                return outcome
            yield Sleep(outcome)

    def _fetch(self, response: httpx.Response, path: str | os.PathLike[str] | None,
               retry: RetryState) -> Plan[ModelFile | float]:
        """Save the API's answer, or follow its redirect to the object store and save that."""
        location = response.headers.get("location")
        if response.status_code not in REDIRECTS or not location:
            return (yield from self._save(response, path, retry, Expected.of_body(response)))
        expected = Expected.of_redirect(response)
        request = self._redirected(response.url.join(location))
        return (yield from self._streamed(
            request, lambda r: self._save(r, path, retry, expected)))

    def _redirected(self, url: httpx.URL) -> httpx.Request:
        """A GET of a redirect's target: the API's headers only on the API's own origin."""
        same_origin = (url.scheme, url.host, url.port) == (
            self._http.base_url.scheme, self._http.base_url.host, self._http.base_url.port)
        if same_origin:
            return self._http.build_request("GET", url, headers={"Accept": "*/*"})
        # A presigned URL is its own credential: our bearer token must not leak to its host.
        headers = {"User-Agent": _calls.USER_AGENT, "Accept": "*/*"}
        return httpx.Request("GET", url, headers=headers,
                             extensions={"timeout": httpx.Timeout(self._timeout).as_dict()})

    def _save(self, response: httpx.Response, path: str | os.PathLike[str] | None,
              retry: RetryState, expected: Expected) -> Plan[ModelFile | float]:
        if not response.is_success:
            return (yield from self._error_delay(response, retry))
        writer = ModelWriter(path, response, expected)
        try:
            chunks = yield Reader(response, CHUNK_BYTES)
            while (chunk := (yield Next(chunks))) is not None:
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return writer.finish()
