"""/v1/jobs: submit, poll, follow and download."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from app.api.credentials import credential
from app.api.deps import (
    ApiKeyDep,
    BlobStoreDep,
    EventHubDep,
    OwnerDep,
    PollsDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    UnitOfWorkDep,
)
from app.api.errors import (
    BODY_ERRORS,
    COMMON_ERRORS,
    NOT_FOUND,
    NOT_FOUND_OR_CONFLICT,
    error_responses,
)
from app.api.followers import EventHub, Frame, read_after, wait
from app.api.polls import JobPoll, PagePoll, Poll
from app.blobstore import BlobInfo
from app.core.errors import InvalidInput, ModelNotReady, problem
from app.core.spec import JobSpec
from app.core.states import JobStatus
from app.core.strict import INT64_MAX
from app.schemas.jobs import CheckpointPublic, EventPublic, JobPublic, JobsPublic
from app.services import jobs as job_service
from app.services import steps as step_service
from app.settings import Settings

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=COMMON_ERRORS)

# Query values the service checks itself (its 422 names the field as `status`, `format`),
# listed in the document so that it says which are accepted.
STATUS_QUERY = Query(json_schema_extra={"enum": [s.value for s in JobStatus]})
# Which of these a job has depends on its framework.
FORMAT_QUERY = Query(json_schema_extra={"enum": sorted({f for fs in job_service.FORMATS.values()
                                                        for f in fs})})
MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the model file (torchscript .pt, safetensors, .onnx or .keras)",
          "content": {"application/octet-stream": {"schema": {"type": "string",
                                                              "format": "binary"}}},
          "headers": {"ETag": {"description": "the file's sha256, quoted",
                               "schema": {"type": "string"}}}},
    304: {"description": "If-None-Match matched the ETag: the file has not changed"},
    307: {"description": "TRAINERY_MODEL_DOWNLOAD=redirect and the model is an object in S3: "
                         "fetch it from Location (a presigned URL); X-Trainery-SHA256 is its "
                         "sha256",
          "headers": {"Location": {"schema": {"type": "string"}},
                      "X-Trainery-SHA256": {"schema": {"type": "string"}}}},
    **NOT_FOUND_OR_CONFLICT,
}
EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the events as JSON; with `Accept: text/event-stream`, a "
                         "server-sent event stream that ends after the job does",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    **NOT_FOUND,
}

SSE_KEEPALIVE_S = 15.0
PAGE_LIMIT, PAGE_LIMIT_MAX = 50, 200  # jobs a page holds unless asked, and at most


@router.post("", status_code=201, response_model=JobPublic,
             responses={200: {"model": JobPublic,
                              "description": "a replay: this Idempotency-Key stored this job "
                                             "before"},
                        **BODY_ERRORS, **error_responses(409)})
def submit_job(spec: JobSpec, response: Response, uow: UnitOfWorkDep, settings: SettingsDep,
               owner: OwnerDep,
               idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> JobPublic:
    """Store the job; a worker is woken once the request's unit of work has committed."""
    job, created = job_service.submit(uow, spec, owner=owner, limits=settings.limits,
                                      idempotency_key=idempotency_key,
                                      max_gpus_per_job=settings.max_gpus_per_job)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return _public(uow.session, job.id, owner, settings)


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic,
             responses=NOT_FOUND_OR_CONFLICT)
def cancel_job(job_id: str, session: SessionDep, settings: SettingsDep,
               owner: OwnerDep) -> JobPublic:
    """A queued job is cancelled at once; a running one stops at its next batch."""
    job_service.cancel(session, job_id, owner)
    return _public(session, job_id, owner, settings)


@router.post("/{job_id}/retry", status_code=202, response_model=JobPublic,
             responses=NOT_FOUND_OR_CONFLICT)
def retry_job(job_id: str, uow: UnitOfWorkDep, settings: SettingsDep,
              owner: OwnerDep) -> JobPublic:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
    job_service.retry(uow, job_id, owner)
    return _public(uow.session, job_id, owner, settings)


@router.get("", response_model=JobsPublic)
async def list_jobs(request: Request, polls: PollsDep, settings: SettingsDep,
                    authorization: ApiKeyDep = None,
                    status: Annotated[str | None, STATUS_QUERY] = None,
                    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = PAGE_LIMIT,
                    cursor: str | None = None) -> Response:
    """Jobs newest first, a page at a time."""
    poll = Poll(credential(request, settings, authorization), PagePoll(status, limit, cursor))
    return Response(await polls.answer(poll), media_type="application/json")


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
async def get_job(job_id: str, request: Request, polls: PollsDep, settings: SettingsDep,
                  authorization: ApiKeyDep = None) -> Response:
    poll = Poll(credential(request, settings, authorization), JobPoll(job_id))
    return Response(await polls.answer(poll), media_type="application/json")


def _public(session: Session, job_id: str, owner: str, settings: Settings) -> JobPublic:
    """A write's answer: the job as its unit of work has left it."""
    session.flush()
    job = job_service.read_job(session, job_id, owner)
    return job_service.to_public(session, job, settings.worker_lost_after_s)


@router.get("/{job_id}/metrics", responses=NOT_FOUND)
def get_metrics(
    job_id: str, session: SessionDep, owner: OwnerDep,
    series: Literal["epochs", "steps"] = "epochs",
    max_points: Annotated[int, Query(ge=2, le=step_service.MAX_POINTS)] = (
        step_service.DEFAULT_POINTS),
) -> list[dict[str, Any]] | dict[str, Any]:
    """The per-epoch series (a row per epoch), or the step series downsampled on the server
    to at most max_points buckets of min, max and last."""
    job = job_service.get_job(session, job_id, owner)
    if series == "steps":
        return step_service.series(session, job.id, max_points)
    return job_service.metrics(session, job)


def _event_public(event: Any) -> EventPublic:
    return EventPublic.model_validate(event, from_attributes=True)


@router.get("/{job_id}/events", response_model=list[EventPublic], responses=EVENTS_RESPONSES)
def get_events(job_id: str, request: Request, session: SessionDep, factory: SessionFactoryDep,
               hub: EventHubDep, owner: OwnerDep,
               after: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
               last_event_id: Annotated[str | None, Header()] = None) -> Any:
    """State changes and log lines in order; `Accept: text/event-stream` follows them live."""
    job = job_service.get_job(session, job_id, owner)
    if "text/event-stream" not in request.headers.get("accept", ""):
        return [_event_public(e) for e in job_service.events(session, job, after)]
    start = after
    if last_event_id and last_event_id.isdigit():
        # Event ids are SQL integers: a larger one is no id we ever sent (and overflows SQLite).
        if int(last_event_id) > INT64_MAX:
            raise InvalidInput([problem(("header", "last-event-id"), "not an event id this "
                                        f"service sent (ids are at most {INT64_MAX})",
                                        "less_than_equal")])
        start = max(start, int(last_event_id))
    # The stream outlives the request's unit of work: it follows the job's shared feed.
    return StreamingResponse(_event_stream(hub, factory, job_id, start),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _catch_up(factory: sessionmaker[Session], job_id: str, after: int) -> list[Frame]:
    # A short session: an idle follower holds no database connection.
    with factory() as session:
        return read_after(session, job_id, after)


async def _event_stream(hub: EventHub, factory: sessionmaker[Session], job_id: str,
                        after: int) -> AsyncIterator[str]:
    """Every event after `after` once, in order; keep-alives while idle; `end` once the job
    has finished and its last event was sent. A client that goes away cancels this
    (Starlette listens for the disconnect), which leaves the feed."""
    async with hub.follow(job_id) as feed:
        while True:
            signal = feed.signal  # taken before reading: a change while we send wakes us
            frames = feed.since(after)
            if frames is None and feed.covered_after is not None:
                frames = await run_in_threadpool(_catch_up, factory, job_id, after)
                if not frames:  # nothing between the cursor and what the feed holds
                    after = feed.covered_after
                    continue
            if frames:
                after = frames[-1].id
                yield "".join(f.text for f in frames)
                continue
            if feed.finished:
                yield "event: end\ndata: {}\n\n"
                return
            if not await wait(signal, SSE_KEEPALIVE_S):
                yield ": keep-alive\n\n"


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointPublic],
            responses=NOT_FOUND)
def get_checkpoints(job_id: str, session: SessionDep, owner: OwnerDep) -> list[CheckpointPublic]:
    """The kept checkpoints, oldest first."""
    job = job_service.get_job(session, job_id, owner)
    return [CheckpointPublic(epoch=c.epoch, attempt=c.attempt, size=b.size, sha256=b.sha256 or "",
                             metrics=c.metrics, created_at=c.created_at)
            for c, b in job_service.checkpoints(session, job)]


@router.get("/{job_id}/model", response_class=Response, responses=MODEL_RESPONSES)
def download_model(job_id: str, session: SessionDep, owner: OwnerDep, blobs: BlobStoreDep,
                   settings: SettingsDep,
                   format: Annotated[str | None, FORMAT_QUERY] = None,
                   if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """Stream the trained model, or redirect to a presigned URL when it is an object in
    S3 (TRAINERY_MODEL_DOWNLOAD); ETag and X-Trainery-SHA256 carry its sha256."""
    job = job_service.get_job(session, job_id, owner)
    artifact, blob = job_service.model_artifact(session, job, format)
    etag = f'"{blob.sha256}"'
    headers = {"ETag": etag, "Content-Length": str(blob.size),
               "Content-Disposition": f'attachment; filename="{artifact.filename}"'}
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    info = BlobInfo(blob.id, blob.size, blob.sha256 or "", blob.location)
    url = (blobs.presign(info, filename=artifact.filename, media_type=artifact.media_type)
           if settings.model_download == "redirect" else None)
    if url is not None:
        # The object store's ETag is not our sha256: clients check this header's.
        return RedirectResponse(url, status_code=307,
                                headers={"ETag": etag, "X-Trainery-SHA256": blob.sha256 or "",
                                         "X-Trainery-Size": str(blob.size)})
    return StreamingResponse(blobs.iter_chunks(blob.id), media_type=artifact.media_type,
                             headers=headers)


@router.get("/{job_id}/model/card", responses=NOT_FOUND_OR_CONFLICT)
def model_card(job_id: str, session: SessionDep, owner: OwnerDep) -> JSONResponse:
    """What the trained model takes and returns, how it was trained, how well it did."""
    job = job_service.get_job(session, job_id, owner)
    if job.status != JobStatus.SUCCEEDED.value or job.model_card is None:
        raise ModelNotReady(f"job {job.id} is {job.status}; the model card is ready once it "
                            "has succeeded")
    card = {**job.model_card, "job_id": job.id, "spec": job.spec, "final_metrics": job.metrics,
            "best": job.best,
            "formats": list(job_service.FORMATS[job.framework])}
    return JSONResponse(card)
