"""The asyncio client: `AsyncClient(url, token)`, the same calls as `Client`, awaited."""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from app.client import api
from app.client.download import ModelWriter
from app.client.errors import error_from_response
from app.client.models import Checkpoint, Dataset, Event, Job, JobPage, MetricRow, ModelFile
from app.client.retry import RetryPolicy
from app.client.sse import EventFollower
from app.client.sync_client import CHUNK_BYTES
from app.client.waiting import JobWaiter

T = TypeVar("T")


class AsyncClient:
    """The Trainery API for asyncio. Use it with `async with`, or await aclose()."""

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout: float = 30.0, retry: RetryPolicy | None = None,
                 stream_read_timeout: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = api.base_url(url)
        self._retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(base_url=self.url, headers=api.default_headers(token),
                                       timeout=timeout, transport=transport)
        self._timeout, self._stream_read_timeout = timeout, stream_read_timeout

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def _request(self, call: api.Call[Any]) -> httpx.Response:
        retry = self._retry.start(call.idempotent)
        while True:
            call.rewind()
            try:
                response = await self._http.request(call.method, call.path, params=call.params,
                                                    json=call.json, headers=call.headers,
                                                    files=call.files, data=call.data)
            except httpx.TransportError as exc:
                await asyncio.sleep(retry.after_error(exc))
                continue
            if response.is_success:
                return response
            delay = retry.after_response(response)
            if delay is None:
                raise error_from_response(response)
            await asyncio.sleep(delay)

    def _stream_timeout(self, follower: EventFollower) -> httpx.Timeout:
        # The server sends a keep-alive every 15 s: a longer silence means a dead link.
        return httpx.Timeout(self._timeout, read=follower.read_timeout(self._stream_read_timeout))

    async def _send(self, call: api.Call[T]) -> T:
        return call.parse(await self._request(call))

    # -- jobs ---------------------------------------------------------------

    async def submit(self, spec: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Submit a job spec; retried safely under one Idempotency-Key (uuid4 by default)."""
        return await self._send(api.submit(spec, idempotency_key))

    async def get(self, job_id: str) -> Job:
        """The job as it is now."""
        return await self._send(api.get_job(job_id))

    async def list_page(self, status: str | None = None, *, page_size: int = 50,
                        cursor: str | None = None) -> JobPage:
        """One page of jobs, newest first; pass its `next_cursor` to get the next."""
        return await self._send(api.list_jobs(status, page_size, cursor))

    async def list(self, status: str | None = None, *,
                   page_size: int = 50) -> AsyncIterator[Job]:
        """Every job (with that status), newest first, fetching pages as you iterate."""
        cursor = None
        while True:
            page = await self.list_page(status, page_size=page_size, cursor=cursor)
            for job in page.data:
                yield job
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def metrics(self, job_id: str) -> builtins.list[MetricRow]:
        """The per-epoch metrics, in order."""
        return await self._send(api.metrics(job_id))

    async def events(self, job_id: str, *, after: int = 0) -> builtins.list[Event]:
        """The job's events so far (after event id `after`), oldest first."""
        found: builtins.list[Event] = []
        while batch := await self._send(api.events(job_id, after)):
            found.extend(batch)
            after = batch[-1].id
        return found

    async def follow(self, job_id: str, *, after: int = 0,
                     timeout: float | None = None) -> AsyncIterator[Event]:
        """Events live from the stream until the job ends, resuming after a dropped connection.

        With a timeout, WaitTimeout if the job has not ended that many seconds from now.
        """
        follower = EventFollower(job_id, after, self._retry, timeout)
        while True:
            try:
                async with self._http.stream("GET", follower.path,
                                             headers=follower.request_headers(),
                                             timeout=self._stream_timeout(follower)) as response:
                    if not response.is_success:
                        await response.aread()
                        delay = follower.after_response(response)
                        if delay is None:
                            raise error_from_response(response)
                    else:
                        async for line in response.aiter_lines():
                            event = follower.feed(line)
                            if event is not None:
                                yield event
                            if follower.finished:
                                return
                        delay = follower.after_eof()
            except httpx.TransportError as exc:
                delay = follower.after_error(exc)
            await asyncio.sleep(delay)

    async def wait(self, job_id: str, timeout: float | None = None, *,
                   poll_s: float = 2.0) -> Job:
        """Poll until the job has finished and return it; WaitTimeout after timeout seconds."""
        waiter = JobWaiter(timeout, poll_s)
        while not (job := await self.get(job_id)).is_terminal:
            await asyncio.sleep(waiter.next_delay(job))
        return job

    async def cancel(self, job_id: str) -> Job:
        """Ask the job to stop (202): queued jobs end at once, running ones within seconds."""
        return await self._send(api.cancel(job_id))

    async def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
        return await self._send(api.retry(job_id))

    async def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        """The kept checkpoints, oldest first."""
        return await self._send(api.checkpoints(job_id))

    async def model_card(self, job_id: str) -> dict[str, Any]:
        """What the trained model takes and returns, and how it was trained."""
        return await self._send(api.model_card(job_id))

    async def download_model(self, job_id: str, path: str | os.PathLike[str] | None = None,
                             format: str | None = None) -> ModelFile:
        """Stream the trained model to path (a file, or a folder for the server's filename).

        The file appears only once its sha256 matches the ETag; ChecksumMismatch otherwise.
        """
        call = api.model_download(job_id, format)
        retry = self._retry.start(call.idempotent)
        while True:
            try:
                async with self._http.stream(call.method, call.path, params=call.params,
                                             headers=call.headers) as response:
                    if response.is_success:
                        writer = ModelWriter(path, response)
                        try:
                            async for chunk in response.aiter_bytes(CHUNK_BYTES):
                                writer.write(chunk)
                        except BaseException:
                            writer.abort()
                            raise
                        return writer.finish()
                    await response.aread()
                    delay = retry.after_response(response)
                    if delay is None:
                        raise error_from_response(response)
            except httpx.TransportError as exc:
                delay = retry.after_error(exc)
            await asyncio.sleep(delay)

    # -- datasets -----------------------------------------------------------

    async def datasets(self) -> builtins.list[Dataset]:
        """The datasets a job can train on."""
        return await self._send(api.list_datasets())

    async def dataset(self, dataset_id: str) -> Dataset:
        return await self._send(api.get_dataset(dataset_id))

    async def upload_dataset(self, path: str | os.PathLike[str], *, name: str | None = None,
                             task: str | None = None, description: str | None = None,
                             **fields: str | int | float) -> Dataset:
        """Upload a dataset file (POST /v1/datasets, multipart); see docs/datasets.md.

        `fields` are further form fields (`format`, `target`, `image_size`). The service
        keeps datasets by content: the same upload again returns the first dataset.
        """
        path = Path(path)
        form = {"name": name, "task": task, "description": description, **fields}
        with path.open("rb") as file:
            return await self._send(api.upload_dataset(file, path.name, form))

    async def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset (409 while an unfinished job trains on it)."""
        await self._send(api.delete_dataset(dataset_id))
