"""The asyncio client: `AsyncClient(url, token)`, the same calls as `Client`, awaited.

It only performs the plans of `_base_client`, with httpx's async client.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx

from trainery_client import _calls
from trainery_client._base_client import BaseClient
from trainery_client._effects import Emit, Plan, PlanRunner
from trainery_client.models import (
    Checkpoint,
    Dataset,
    Event,
    Job,
    JobPage,
    MetricRow,
    ModelFile,
    StepSeries,
    Study,
    StudyPage,
    StudySnapshot,
    Trial,
)

T = TypeVar("T")


class AsyncClient(BaseClient[httpx.AsyncClient]):
    """The Trainery API for asyncio. Use it with `async with`, or await aclose()."""

    _http_class = httpx.AsyncClient

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def _iterate(self, plan: Plan[Any],
                       runner: PlanRunner | None = None) -> AsyncIterator[Any]:
        """Perform the plan's effects, awaited; yield what it emits."""
        runner = runner or PlanRunner(plan)
        try:
            for effect in runner:
                if not isinstance(effect, Emit):
                    try:
                        runner.settle(effect, await effect.arun(self._http))
                    except Exception as exc:
                        runner.fail(exc)
                else:
                    yield effect.item
        finally:
            for response in runner.stop():
                await response.aclose()

    async def _run(self, plan: Plan[T]) -> T:
        """Perform a plan that emits nothing; its result."""
        runner = PlanRunner(plan)
        async for _ in self._iterate(plan, runner):
            raise TypeError("this call's plan emits items; iterate it instead")
        return runner.result  # type: ignore[no-any-return]

    # -- jobs ---------------------------------------------------------------

    async def submit(self, spec: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Submit a job spec; retried safely under one Idempotency-Key (uuid4 by default)."""
        return await self._run(self._call(_calls.submit(spec, idempotency_key)))

    async def get(self, job_id: str) -> Job:
        """The job as it is now."""
        return await self._run(self._call(_calls.get_job(job_id)))

    async def list_page(self, status: str | None = None, *, page_size: int = 50,
                        cursor: str | None = None) -> JobPage:
        """One page of jobs, newest first; pass its `next_cursor` to get the next."""
        return await self._run(self._call(_calls.list_jobs(status, page_size, cursor)))

    def list(self, status: str | None = None, *, page_size: int = 50) -> AsyncIterator[Job]:
        """Every job (with that status), newest first, fetching pages as you iterate."""
        return self._iterate(self._list(status, page_size))

    async def metrics(self, job_id: str) -> builtins.list[MetricRow]:
        """The per-epoch metrics, in order."""
        return await self._run(self._call(_calls.metrics(job_id)))

    async def step_metrics(self, job_id: str, *, max_points: int = 1000) -> StepSeries:
        """The per-step series, downsampled by the server (min, max and last per bucket)."""
        return await self._run(self._call(_calls.step_metrics(job_id, max_points)))

    async def events(self, job_id: str, *, after: int = 0) -> builtins.list[Event]:
        """The job's events so far (after event id `after`), oldest first."""
        return await self._run(self._events(job_id, after))

    def follow(self, job_id: str, *, after: int = 0,
               timeout: float | None = None) -> AsyncIterator[Event]:
        """Events live from the stream until the job ends, resuming after a dropped connection.

        With a timeout, WaitTimeout if the job has not ended that many seconds from now.
        """
        return self._iterate(self._follow(job_id, after, timeout))

    async def wait(self, job_id: str, timeout: float | None = None, *, poll_s: float = 2.0) -> Job:
        """Poll until the job has finished and return it; WaitTimeout after timeout seconds."""
        return await self._run(self._wait(job_id, timeout, poll_s))

    async def cancel(self, job_id: str) -> Job:
        """Ask the job to stop (202): queued jobs end at once, running ones within seconds."""
        return await self._run(self._call(_calls.cancel(job_id)))

    async def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
        return await self._run(self._call(_calls.retry(job_id)))

    async def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        """The kept checkpoints, oldest first."""
        return await self._run(self._call(_calls.checkpoints(job_id)))

    async def model_card(self, job_id: str) -> dict[str, Any]:
        """What the trained model takes and returns, and how it was trained."""
        return await self._run(self._call(_calls.model_card(job_id)))

    async def download_model(self, job_id: str, path: str | os.PathLike[str] | None = None,
                             format: str | None = None) -> ModelFile:
        """Stream the trained model to path (a file, or a folder for the server's filename).

        The file appears only once its sha256 matches the API's; ChecksumMismatch otherwise.
        """
        return await self._run(self._download(job_id, path, format))

    # -- datasets -----------------------------------------------------------

    async def datasets(self) -> builtins.list[Dataset]:
        """The datasets a job can train on."""
        return await self._run(self._call(_calls.list_datasets()))

    async def dataset(self, dataset_id: str) -> Dataset:
        """One dataset."""
        return await self._run(self._call(_calls.get_dataset(dataset_id)))

    async def upload_dataset(self, path: str | os.PathLike[str], *, name: str | None = None,
                             task: str | None = None, description: str | None = None,
                             **fields: str | int | float) -> Dataset:
        """Upload a dataset file (POST /v1/datasets, multipart); see docs/datasets.md.

        `fields` are further form fields (`format`, `target`, `image_size`). The service
        keeps datasets by content: the same upload again returns the first dataset.
        """
        form = {"name": name, "task": task, "description": description, **fields}
        return await self._run(self._upload(path, form))

    async def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset (409 while an unfinished job trains on it)."""
        await self._run(self._call(_calls.delete_dataset(dataset_id)))

    # -- studies ------------------------------------------------------------

    async def create_study(self, request: Mapping[str, Any] | str | os.PathLike[str]) -> Study:
        """Start a study (POST /v1/studies) from a request mapping or a YAML/JSON file's path.

        Sent once, never retried: the API keeps no idempotency key for studies.
        """
        return await self._run(self._create_study(request))

    async def study(self, study_id: str) -> Study:
        """The study as it is now: state, trial counts, the best trial."""
        return await self._run(self._call(_calls.get_study(study_id)))

    async def studies_page(self, state: str | None = None, *, page_size: int = 50,
                           cursor: str | None = None) -> StudyPage:
        """One page of studies, newest first; pass its `next_cursor` to get the next."""
        return await self._run(self._call(_calls.list_studies(state, page_size, cursor)))

    def studies(self, state: str | None = None, *, page_size: int = 50) -> AsyncIterator[Study]:
        """Every study (in that state), newest first, fetching pages as you iterate."""
        return self._iterate(self._studies(state, page_size))

    async def study_trials(self, study_id: str) -> builtins.list[Trial]:
        """The study's trials: params, state, objective, epochs trained, pruned or not, job id."""
        return await self._run(self._call(_calls.study_trials(study_id)))

    async def update_study(self, study_id: str, *, max_trials: int | None = None,
                           max_concurrent_trials: int | None = None) -> Study:
        """Change a running study's max_trials and/or max_concurrent_trials (409 once it ended)."""
        return await self._run(self._call(_calls.patch_study(study_id, max_trials,
                                                             max_concurrent_trials)))

    async def cancel_study(self, study_id: str) -> Study:
        """End the study as cancelled: queued trials stop at once, running ones at a batch end."""
        return await self._run(self._call(_calls.cancel_study(study_id)))

    async def wait_study(self, study_id: str, timeout: float | None = None, *,
                         poll_s: float = 2.0) -> Study:
        """Poll until the study has ended and return it; WaitTimeout after timeout seconds."""
        return await self._run(self._wait_study(study_id, timeout, poll_s))

    def follow_study(self, study_id: str, *, timeout: float | None = None,
                     poll_s: float = 2.0) -> AsyncIterator[StudySnapshot]:
        """The study and its trials each time they change, polled, until the study has ended.

        The last snapshot shows the ended study. With a timeout, WaitTimeout if it has not
        ended that many seconds from now.
        """
        return self._iterate(self._follow_study(study_id, timeout, poll_s))
