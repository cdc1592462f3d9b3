"""The calls the API takes and how their answers parse: the request builder of both clients.

Each function builds a `Call`: a description of one request. `_base_client` turns it into
an httpx request, sends it (with retries where `idempotent` says so) and hands the
response to `parse`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from trainery_client._version import __version__
from trainery_client.models import (
    Checkpoint,
    Dataset,
    Event,
    Job,
    JobPage,
    MetricRow,
    StepSeries,
    Study,
    StudyPage,
    Trial,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = f"trainery-client/{__version__}"


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, IO[bytes], str]] | None = None
    data: dict[str, str] | None = None
    idempotent: bool = False

    def rewind(self) -> None:
        """Put the files to send back at their start, so a retry sends them whole."""
        for _, file, _ in (self.files or {}).values():
            file.seek(0)


def base_url(url: str | None) -> str:
    """The server's URL: the argument, else TRAINERY_URL, else the local default."""
    return (url or os.environ.get("TRAINERY_URL") or DEFAULT_URL).rstrip("/")


def default_headers(token: str | None) -> dict[str, str]:
    """Headers every request carries; the token (or TRAINERY_TOKEN) as a bearer credential."""
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    token = token if token is not None else os.environ.get("TRAINERY_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def job_path(job_id: str, *rest: str) -> str:
    """/v1/jobs/{id}[/rest...], with the id quoted so it can never leave its path segment."""
    return "/".join([f"/v1/jobs/{quote(job_id, safe='')}", *rest])


def study_path(study_id: str, *rest: str) -> str:
    """/v1/studies/{id}[/rest...], the id quoted like a job's."""
    return "/".join([f"/v1/studies/{quote(study_id, safe='')}", *rest])


def _one(cls: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: cls.model_validate_json(response.content)


def _many(cls: type[M]) -> Callable[[httpx.Response], list[M]]:
    adapter = TypeAdapter(list[cls])  # type: ignore[valid-type]
    return lambda response: adapter.validate_json(response.content)


def _json(response: httpx.Response) -> dict[str, Any]:
    return response.json()  # type: ignore[no-any-return]


def submit(spec: Mapping[str, Any], idempotency_key: str | None = None) -> Call[Job]:
    """POST /v1/jobs; a fresh Idempotency-Key unless given, which is what makes retrying it safe."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"spec must be a mapping (the job spec), not {type(spec).__name__}")
    body = json.loads(json.dumps(dict(spec)))  # fails here, not mid-request, if not JSON-able
    key = idempotency_key or str(uuid.uuid4())
    return Call("POST", "/v1/jobs", _one(Job), json=body, headers={"Idempotency-Key": key},
                idempotent=True)


def get_job(job_id: str) -> Call[Job]:
    return Call("GET", job_path(job_id), _one(Job), idempotent=True)


def _page_params(filter_name: str, value: str | None, limit: int,
                 cursor: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if value is not None:
        params[filter_name] = value
    if cursor is not None:
        params["cursor"] = cursor
    return params


def list_jobs(status: str | None, limit: int, cursor: str | None) -> Call[JobPage]:
    return Call("GET", "/v1/jobs", _one(JobPage),
                params=_page_params("status", status, limit, cursor), idempotent=True)


def metrics(job_id: str) -> Call[list[MetricRow]]:
    return Call("GET", job_path(job_id, "metrics"), _many(MetricRow), idempotent=True)


def step_metrics(job_id: str, max_points: int) -> Call[StepSeries]:
    return Call("GET", job_path(job_id, "metrics"), _one(StepSeries),
                params={"series": "steps", "max_points": max_points}, idempotent=True)


def events(job_id: str, after: int) -> Call[list[Event]]:
    return Call("GET", job_path(job_id, "events"), _many(Event), params={"after": after},
                idempotent=True)


def checkpoints(job_id: str) -> Call[list[Checkpoint]]:
    return Call("GET", job_path(job_id, "checkpoints"), _many(Checkpoint), idempotent=True)


def model_card(job_id: str) -> Call[dict[str, Any]]:
    return Call("GET", job_path(job_id, "model", "card"), _json, idempotent=True)


def cancel(job_id: str) -> Call[Job]:
    return Call("POST", job_path(job_id, "cancel"), _one(Job))


def retry(job_id: str) -> Call[Job]:
    return Call("POST", job_path(job_id, "retry"), _one(Job))


def list_datasets() -> Call[list[Dataset]]:
    def parse(response: httpx.Response) -> list[Dataset]:
        body = response.json()
        items = body["data"] if isinstance(body, dict) else body
        return [Dataset.model_validate(d) for d in items]

    return Call("GET", "/v1/datasets", parse, idempotent=True)


def get_dataset(dataset_id: str) -> Call[Dataset]:
    return Call("GET", f"/v1/datasets/{quote(dataset_id, safe='')}", _one(Dataset),
                idempotent=True)


def upload_dataset(file: IO[bytes], filename: str, fields: Mapping[str, object]) -> Call[Dataset]:
    """POST /v1/datasets as multipart: the file in `file`, the rest as form fields.

    Retried like a GET: the service stores datasets by content, so sending the same bytes
    the same way again returns the dataset stored the first time.
    """
    form = {k: str(v) for k, v in fields.items() if v is not None}
    return Call("POST", "/v1/datasets", _one(Dataset),
                files={"file": (filename, file, "application/octet-stream")}, data=form,
                idempotent=True)


def delete_dataset(dataset_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/datasets/{quote(dataset_id, safe='')}", lambda _: None)


def model_download(job_id: str, format: str | None) -> Call[None]:
    """GET /v1/jobs/{id}/model, streamed by the client (parse is unused)."""
    params = {"format": format} if format else None
    return Call("GET", job_path(job_id, "model"), lambda _: None, params=params,
                headers={"Accept": "*/*"}, idempotent=True)


# -- studies -------------------------------------------------------------------


def create_study(request: Mapping[str, Any]) -> Call[Study]:
    """POST /v1/studies; sent once (the API keeps no idempotency key for studies)."""
    if not isinstance(request, Mapping):
        raise TypeError(f"a study request must be a mapping, not {type(request).__name__}")
    body = json.loads(json.dumps(dict(request)))  # fails here, not mid-request, if not JSON-able
    return Call("POST", "/v1/studies", _one(Study), json=body)


def get_study(study_id: str) -> Call[Study]:
    return Call("GET", study_path(study_id), _one(Study), idempotent=True)


def list_studies(state: str | None, limit: int, cursor: str | None) -> Call[StudyPage]:
    return Call("GET", "/v1/studies", _one(StudyPage),
                params=_page_params("state", state, limit, cursor), idempotent=True)


def study_trials(study_id: str) -> Call[list[Trial]]:
    return Call("GET", study_path(study_id, "trials"), _many(Trial), idempotent=True)


def patch_study(study_id: str, max_trials: int | None,
                max_concurrent_trials: int | None) -> Call[Study]:
    """PATCH /v1/studies/{id} with the limits given; setting one to the same value twice
    changes nothing, so it is retried like a GET."""
    change = {k: v for k, v in (("max_trials", max_trials),
                                ("max_concurrent_trials", max_concurrent_trials))
              if v is not None}
    if not change:
        raise ValueError("give max_trials, max_concurrent_trials or both")
    return Call("PATCH", study_path(study_id), _one(Study), json=change, idempotent=True)


def cancel_study(study_id: str) -> Call[Study]:
    return Call("POST", study_path(study_id, "cancel"), _one(Study))
