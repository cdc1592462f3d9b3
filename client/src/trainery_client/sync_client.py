"""The blocking client: `Client(url, token)`. It only performs the plans of `_base_client`."""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator, Mapping
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


class Client(BaseClient[httpx.Client]):
    """The Trainery API, blocking. Use it as a context manager, or call close()."""

    _http_class = httpx.Client

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _iterate(self, plan: Plan[Any], runner: PlanRunner | None = None) -> Iterator[Any]:
        """Perform the plan's effects, blocking; yield what it emits."""
        runner = runner or PlanRunner(plan)
        try:
            for effect in runner:
                if isinstance(effect, Emit):
                    yield effect.item
                    continue
                try:
                    runner.settle(effect, effect.run(self._http))
                except Exception as exc:
                    runner.fail(exc)
        finally:
            for response in runner.stop():
                response.close()

    def _run(self, plan: Plan[T]) -> T:
        """Perform a plan that emits nothing; its result."""
        runner = PlanRunner(plan)
        for _ in self._iterate(plan, runner):
            raise TypeError("this call's plan emits items; iterate it instead")
        return runner.result  # type: ignore[no-any-return]

    # -- jobs ---------------------------------------------------------------

    def submit(self, spec: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Submit a job spec; retried safely under one Idempotency-Key (uuid4 by default)."""
        return self._run(self._call(_calls.submit(spec, idempotency_key)))

    def get(self, job_id: str) -> Job:
        """The job as it is now."""
        return self._run(self._call(_calls.get_job(job_id)))

    def list_page(self, status: str | None = None, *, page_size: int = 50,
                  cursor: str | None = None) -> JobPage:
        """One page of jobs, newest first; pass its `next_cursor` to get the next."""
        return self._run(self._call(_calls.list_jobs(status, page_size, cursor)))

    def list(self, status: str | None = None, *, page_size: int = 50) -> Iterator[Job]:
        """Every job (with that status), newest first, fetching pages as you iterate."""
        return self._iterate(self._list(status, page_size))

    def metrics(self, job_id: str) -> builtins.list[MetricRow]:
        """The per-epoch metrics, in order."""
        return self._run(self._call(_calls.metrics(job_id)))

    def step_metrics(self, job_id: str, *, max_points: int = 1000) -> StepSeries:
        """The per-step series, downsampled by the server (min, max and last per bucket)."""
        return self._run(self._call(_calls.step_metrics(job_id, max_points)))

    def events(self, job_id: str, *, after: int = 0) -> builtins.list[Event]:
        """The job's events so far (after event id `after`), oldest first."""
        return self._run(self._events(job_id, after))

    def follow(self, job_id: str, *, after: int = 0,
               timeout: float | None = None) -> Iterator[Event]:
        """Events live from the stream until the job ends, resuming after a dropped connection.

        With a timeout, WaitTimeout if the job has not ended that many seconds from now.
        """
        return self._iterate(self._follow(job_id, after, timeout))

    def wait(self, job_id: str, timeout: float | None = None, *, poll_s: float = 2.0) -> Job:
        """Poll until the job has finished and return it; WaitTimeout after timeout seconds."""
        return self._run(self._wait(job_id, timeout, poll_s))

    def cancel(self, job_id: str) -> Job:
        """Ask the job to stop (202): queued jobs end at once, running ones within seconds."""
        return self._run(self._call(_calls.cancel(job_id)))

    def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
        return self._run(self._call(_calls.retry(job_id)))

    def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        """The kept checkpoints, oldest first."""
        return self._run(self._call(_calls.checkpoints(job_id)))

    def model_card(self, job_id: str) -> dict[str, Any]:
        """What the trained model takes and returns, and how it was trained."""
        return self._run(self._call(_calls.model_card(job_id)))

    def download_model(self, job_id: str, path: str | os.PathLike[str] | None = None,
                       format: str | None = None) -> ModelFile:
        """Stream the trained model to path (a file, or a folder for the server's filename).

        The file appears only once its sha256 matches the API's; ChecksumMismatch otherwise.
        """
        return self._run(self._download(job_id, path, format))

    # -- datasets -----------------------------------------------------------

    def datasets(self) -> builtins.list[Dataset]:
        """The datasets a job can train on."""
        return self._run(self._call(_calls.list_datasets()))

    def dataset(self, dataset_id: str) -> Dataset:
        """One dataset."""
        return self._run(self._call(_calls.get_dataset(dataset_id)))

    def upload_dataset(self, path: str | os.PathLike[str], *, name: str | None = None,
                       task: str | None = None, description: str | None = None,
                       **fields: str | int | float) -> Dataset:
        """Upload a dataset file (POST /v1/datasets, multipart); see docs/datasets.md.

        `fields` are further form fields (`format`, `target`, `image_size`). The service
        keeps datasets by content: the same upload again returns the first dataset.
        """
        form = {"name": name, "task": task, "description": description, **fields}
        return self._run(self._upload(path, form))

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset (409 while an unfinished job trains on it)."""
        self._run(self._call(_calls.delete_dataset(dataset_id)))

    # -- studies ------------------------------------------------------------

    def create_study(self, request: Mapping[str, Any] | str | os.PathLike[str]) -> Study:
        """Start a study (POST /v1/studies) from a request mapping or a YAML/JSON file's path.

        Sent once, never retried: the API keeps no idempotency key for studies.
        """
        return self._run(self._create_study(request))

    def study(self, study_id: str) -> Study:
        """The study as it is now: state, trial counts, the best trial."""
        return self._run(self._call(_calls.get_study(study_id)))

    def studies_page(self, state: str | None = None, *, page_size: int = 50,
                     cursor: str | None = None) -> StudyPage:
        """One page of studies, newest first; pass its `next_cursor` to get the next."""
        return self._run(self._call(_calls.list_studies(state, page_size, cursor)))

    def studies(self, state: str | None = None, *, page_size: int = 50) -> Iterator[Study]:
        """Every study (in that state), newest first, fetching pages as you iterate."""
        return self._iterate(self._studies(state, page_size))

    def study_trials(self, study_id: str) -> builtins.list[Trial]:
        """The study's trials: params, state, objective, epochs trained, pruned or not, job id."""
        return self._run(self._call(_calls.study_trials(study_id)))

    def update_study(self, study_id: str, *, max_trials: int | None = None,
                     max_concurrent_trials: int | None = None) -> Study:
        """Change a running study's max_trials and/or max_concurrent_trials (409 once it ended)."""
        return self._run(self._call(_calls.patch_study(study_id, max_trials,
                                                       max_concurrent_trials)))

    def cancel_study(self, study_id: str) -> Study:
        """End the study as cancelled: queued trials stop at once, running ones at a batch end."""
        return self._run(self._call(_calls.cancel_study(study_id)))

    def wait_study(self, study_id: str, timeout: float | None = None, *,
                   poll_s: float = 2.0) -> Study:
        """Poll until the study has ended and return it; WaitTimeout after timeout seconds."""
        return self._run(self._wait_study(study_id, timeout, poll_s))

    def follow_study(self, study_id: str, *, timeout: float | None = None,
                     poll_s: float = 2.0) -> Iterator[StudySnapshot]:
        """The study and its trials each time they change, polled, until the study has ended.

        The last snapshot shows the ended study. With a timeout, WaitTimeout if it has not
        ended that many seconds from now.
        """
        return self._iterate(self._follow_study(study_id, timeout, poll_s))
