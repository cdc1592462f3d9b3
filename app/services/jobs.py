"""Job submission and queries: the rules routes rely on, with SQL beside the models."""

from __future__ import annotations

import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, Select, String, and_, bindparam, func, or_, select, type_coerce
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.catalog import BUILTIN_DATASETS
from app.core.errors import (
    ExportUnavailable,
    InvalidInput,
    InvalidTransition,
    JobNotFound,
    ModelNotReady,
    NotFound,
    UserError,
    problem,
)
from app.core.estimate import EVAL_BATCH_MIN, DataShape, builtin_data, estimate
from app.core.modelspec import resolve
from app.core.spec import Conv2DLayer, DenseLayer, JobSpec, ResidualLayer
from app.core.states import JobStatus
from app.models import Artifact, Blob, Checkpoint, EpochMetrics, Job, JobEvent, WorkerRecord
from app.schemas.jobs import JobError, JobPublic, Progress
from app.services import cursors, datasets, lifecycle, workers
from app.services.unit_of_work import UnitOfWork
from app.settings import Limits

# Where to_public reads the live fleet from (workers.FleetSnapshot; default: the store).
Fleet = Callable[[Session], list[WorkerRecord]]

# What a read of jobs selects: the columns JobPublic shows, owner and queue (not the
# model card), and for a queued job how many are ahead of it (workers.AHEAD). Reads are
# Core statements on the session's connection, not ORM entities: a poll is answered at a
# fraction of the cost (bench/service.py), and the statement is built once, so
# SQLAlchemy compiles it once.
_JOBS = Job.__table__
SHOWN_COLUMNS = tuple(_JOBS.c[name] for name in (
    "id", "owner", "name", "framework", "status", "attempt", "worker", "priority", "queue",
    "created_at", "updated_at", "started_at", "finished_at", "heartbeat_at", "progress_epoch",
    "progress_epochs", "metrics", "best", "error_type", "error_message", "spec"))
PUBLIC_COLUMNS = (*SHOWN_COLUMNS, workers.AHEAD)
_ONE_JOB = select(*PUBLIC_COLUMNS).where(_JOBS.c.id == bindparam("job_id"))
_JOBS_BY_ID = select(*PUBLIC_COLUMNS).where(_JOBS.c.id.in_(bindparam("ids", expanding=True)))
# What tells one version of a job, as the API shows it, from another: every write to a
# job goes through app.services.lifecycle, and each moves updated_at (a transition, an
# epoch's metrics) or heartbeat_at (a heartbeat); status and attempt are there too for
# good measure. The two times are compared as the store gives them (not parsed: on
# SQLite, parsing them was a third of reading a page). A page is read as its jobs'
# versions (and queue positions), and only the jobs whose version this process has not
# shown before are read in full (PublicCache).
VERSION_COLUMNS = (_JOBS.c.id, _JOBS.c.status, _JOBS.c.attempt,
                   type_coerce(_JOBS.c.updated_at, String).label("updated_raw"),
                   type_coerce(_JOBS.c.heartbeat_at, String).label("heartbeat_raw"))
_SOME_JOBS: Select[Any] = (select(*SHOWN_COLUMNS, *VERSION_COLUMNS[3:])
              .where(_JOBS.c.id.in_(bindparam("ids", expanding=True))))
PAGE_COLUMNS = (*VERSION_COLUMNS, _JOBS.c.queue, _JOBS.c.created_at, workers.AHEAD)


class IdempotencyMismatch(InvalidInput):
    status_code = 409
    code = "idempotency_key_reused"


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex[:24]}"


def check_limits(spec: JobSpec, limits: Limits, max_gpus_per_job: int = 8,
                 data: DataShape | None = None) -> None:
    """Raise InvalidInput listing every field over the service's limits; data is the
    dataset's shape (an upload's, from its row; builtin ones are known from the spec)."""
    problems: list[dict[str, Any]] = []

    def over(loc: tuple[str | int, ...], value: int, cap: int, what: str) -> None:
        if value > cap:
            problems.append(problem(loc, f"{what} is {value}; this service allows at most {cap}",
                                    "limit_exceeded"))

    over(("training", "epochs"), spec.training.epochs, limits.max_epochs, "epochs")
    over(("training", "batch_size"), spec.training.batch_size, limits.max_batch_size, "batch_size")
    over(("resources", "max_runtime_s"), spec.resources.max_runtime_s, limits.max_runtime_s,
         "max_runtime_s")
    if spec.resources.gpus > max_gpus_per_job:
        problems.append(problem(("resources", "gpus"),
                                f"the job asks for {spec.resources.gpus} GPUs; this service "
                                f"runs a job on at most {max_gpus_per_job} (one host's; "
                                "TRAINERY_MAX_GPUS_PER_JOB)", "limit_exceeded"))
    if spec.model.layers is not None:
        over(("model", "layers"), len(spec.model.layers), limits.max_layers, "the layer count")
        for i, layer in enumerate(spec.model.layers):
            if isinstance(layer, DenseLayer):
                over(("model", "layers", i, "units"), layer.units, limits.max_units, "units")
            elif isinstance(layer, (Conv2DLayer, ResidualLayer)):
                over(("model", "layers", i, "filters"), layer.filters, limits.max_units, "filters")
    ds = spec.dataset
    if ds.is_synthetic and ds.n_samples is not None and ds.sample_shape is not None:
        over(("dataset", "n_samples"), ds.n_samples, limits.max_synthetic_samples, "n_samples")
        over(("dataset", "sample_shape"), math.prod(ds.sample_shape), limits.max_sample_elements,
             "the number of values per sample")
    if not problems:
        problems = _resource_problems(spec, limits, data or builtin_data(ds))
    if problems:
        raise InvalidInput(problems)


def _resource_problems(spec: JobSpec, limits: Limits,
                       data: DataShape | None) -> list[dict[str, Any]]:
    """What the job would need (app/core/estimate.py) against the limits, field by field."""
    if data is None:
        return []
    try:
        layers = resolve(spec.model, data.sample_shape)
    except UserError:
        return []  # a model that does not fit its data fails as the runner's user_error
    need = estimate(spec, layers, data)
    problems = []
    model_field: tuple[str, ...] = ("model",
                                    "layers" if spec.model.layers is not None else "preset")
    if need.params > limits.max_params:
        problems.append(problem(model_field, f"the model has {need.params:,} trainable "
                                f"parameters; this service allows at most {limits.max_params:,} "
                                "(TRAINERY_LIMIT_MAX_PARAMS)", "limit_exceeded"))
    if spec.dataset.is_synthetic and data.nbytes > limits.max_dataset_bytes:
        problems.append(problem(("dataset", "n_samples"), f"{data.n_samples:,} samples of shape "
                                f"{list(data.sample_shape)} are {_size(data.nbytes)} of synthetic "
                                f"data; this service generates at most "
                                f"{_size(limits.max_dataset_bytes)} "
                                "(TRAINERY_LIMIT_MAX_DATASET_BYTES)", "limit_exceeded"))
    if not problems and need.total > limits.job_memory_bytes:
        # Named after the field whose share is largest; evaluation batches hold at least
        # EVAL_BATCH_MIN samples whatever batch_size says, so there the layers are to blame.
        batch = model_field if need.evaluation_bound else ("training", "batch_size")
        parts = {model_field: need.weights + need.gradients + need.optimizer,
                 batch: need.activations, ("dataset",): need.dataset}
        worst = max(parts, key=parts.__getitem__)
        problems.append(problem(worst, (
            f"the job needs about {_size(need.total)} of memory (weights "
            f"{_size(need.weights)}, gradients {_size(need.gradients)}, optimizer state "
            f"{_size(need.optimizer)}, activations of one batch {_size(need.activations)}"
            f"{EVALUATION_NOTE if need.evaluation_bound else ''}, "
            f"dataset {_size(need.dataset)}); a worker gives a job at most "
            f"{_size(limits.job_memory_bytes)} (TRAINERY_LIMIT_JOB_MEMORY_BYTES)"),
            "limit_exceeded"))
    return problems


EVALUATION_NOTE = f" in evaluation, which runs batches of at least {EVAL_BATCH_MIN} samples"


def _size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def submit(uow: UnitOfWork, spec: JobSpec, *, owner: str, limits: Limits,
           idempotency_key: str | None, max_gpus_per_job: int = 8) -> tuple[Job, bool]:
    """Store a new queued job and wake a worker after the commit; (job, created).

    A repeated idempotency key returns the first job (and wakes nobody)."""
    session = uow.session
    data = datasets.check_job_dataset(session, spec, owner)
    check_limits(spec, limits, max_gpus_per_job, data)
    spec_json = spec.model_dump(mode="json", exclude_none=True)
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, owner, idempotency_key)
        if existing is not None:
            return _replay(existing, spec_json), False
    job = Job(id=new_job_id(), owner=owner, name=spec.name, framework=spec.framework,
              priority=spec.priority, queue=workers.route(spec),
              spec=spec_json, idempotency_key=idempotency_key, attempt=0,
              progress_epoch=0, progress_epochs=spec.training.epochs)
    try:
        with session.begin_nested():
            lifecycle.create_job(session, job)
    except IntegrityError:
        # Another request with the same key won the race; answer with its job.
        existing = _by_idempotency_key(session, owner, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, spec_json), False
    uow.wake_after_commit(job.id, job.queue)
    return job, True


def _by_idempotency_key(session: Session, owner: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))


def _replay(job: Job, spec_json: dict[str, Any]) -> Job:
    if job.spec != spec_json:
        raise IdempotencyMismatch(
            f"Idempotency-Key was first used for job {job.id} with a different spec; "
            "use a new key for a new job")
    return job


def get_job(session: Session, job_id: str, owner: str) -> Job:
    """The job, or JobNotFound."""
    # populate_existing: a route that just changed the job with an UPDATE reads it fresh.
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.owner != owner:
        raise JobNotFound(f"no job with id {job_id!r}")
    return job


def cancel(session: Session, job_id: str, owner: str) -> str:
    """Ask the job to stop; its new status, or InvalidTransition if it already finished."""
    job = get_job(session, job_id, owner)
    status = lifecycle.request_cancel(session, job.id)
    if status is None:
        raise InvalidTransition(f"job {job.id} is {job.status}; only queued or running jobs "
                                "can be cancelled")
    return status


def retry(uow: UnitOfWork, job_id: str, owner: str) -> Job:
    """Queue a failed or cancelled job again (a worker is woken after the commit), or
    InvalidTransition."""
    job = get_job(uow.session, job_id, owner)
    if not lifecycle.retry(uow.session, job.id):
        raise InvalidTransition(f"job {job.id} is {job.status}; only failed or cancelled jobs "
                                "can be retried")
    uow.wake_after_commit(job.id, job.queue)
    return job


def read_job(session: Session, job_id: str, owner: str) -> Row[Any]:
    """The job's PUBLIC_COLUMNS, or JobNotFound: what the API shows of get_job's job. A
    Core read: what this session has written must have been flushed."""
    row = session.connection().execute(_ONE_JOB, {"job_id": job_id}).one_or_none()
    if row is None or row.owner != owner:
        raise JobNotFound(f"no job with id {job_id!r}")
    return row


def read_jobs(session: Session, job_ids: Iterable[str]) -> dict[str, Row[Any]]:
    """The jobs among job_ids that exist, by id, as read_job reads them (any owner's), in
    one statement."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    return {row.id: row for row in session.connection().execute(_JOBS_BY_ID, {"ids": ids})}


def list_jobs(session: Session, owner: str, *, status: str | None, limit: int,
              cursor: str | None, name_contains: str | None = None,
              columns: Sequence[Any] = PUBLIC_COLUMNS) -> tuple[list[Row[Any]], str | None]:
    """A page of jobs (rows of columns: PUBLIC_COLUMNS, or PAGE_COLUMNS for public_page),
    newest first, and the next page's cursor."""
    c = _JOBS.c
    stmt = select(*columns).where(c.owner == owner)
    if name_contains:
        stmt = stmt.where(func.lower(c.name).contains(name_contains.lower(), autoescape=True))
    if status is not None:
        if status not in {s.value for s in JobStatus}:
            raise InvalidInput([problem(("status",), f"unknown status {status!r}; choose one of "
                                        + ", ".join(s.value for s in JobStatus))])
        stmt = stmt.where(c.status == status)
    if cursor is not None:
        created, job_id = cursors.decode(cursor)
        stmt = stmt.where(or_(c.created_at < created,
                              and_(c.created_at == created, c.id < job_id)))
    jobs = list(session.connection().execute(
        stmt.order_by(c.created_at.desc(), c.id.desc()).limit(limit + 1)))
    next_cursor = None
    if len(jobs) > limit:
        last = jobs[limit - 1]
        next_cursor = cursors.encode(last.created_at, last.id)
    return jobs[:limit], next_cursor


def to_public(session: Session, job: Row[Any], lost_after_s: float = 30.0,
              fleet: Fleet | None = None) -> JobPublic:
    """The job as the API shows it."""
    return to_public_page(session, [job], lost_after_s, fleet)[0]


def to_public_page(session: Session, jobs: Sequence[Row[Any]], lost_after_s: float = 30.0,
                   fleet: Fleet | None = None) -> list[JobPublic]:
    """Jobs as the API shows them; pending reasons for the whole page in a fixed few queries
    (fleet: where the live fleet comes from, e.g. a process's workers.FleetSnapshot)."""
    reasons = workers.pending_reasons(session, jobs, lost_after_s, fleet)
    return [_public(job, reasons.get(job.id)) for job in jobs]


class PublicCache:
    """JobPublic of the jobs an API process showed last, by version (VERSION_COLUMNS).

    A page of 50 jobs read in full is 50 specs, metrics and error texts parsed and
    validated, for jobs that mostly have not changed since the last poll (ended ones
    never do). An entry is used only for the exact version the page's own read found,
    so a page is never staler than its read; the pending reason is never cached. At
    most max_entries jobs (least recently shown dropped first): TRAINERY_JOB_CACHE_ENTRIES.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Any, ...], JobPublic] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version: tuple[Any, ...]) -> JobPublic | None:
        with self._lock:
            found = self._entries.get(version)
            if found is not None:
                self._entries.move_to_end(version)
            return found

    def put(self, version: tuple[Any, ...], job: JobPublic) -> JobPublic:
        with self._lock:
            self._entries[version] = job
            self._entries.move_to_end(version)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return job

    def __len__(self) -> int:
        return len(self._entries)


def _version(row: Row[Any]) -> tuple[Any, ...]:
    return (row.id, row.status, row.attempt, row.updated_raw, row.heartbeat_raw)


@dataclass(frozen=True)
class _Queued:
    """A queued job of a page, as workers.pending_reasons needs it."""

    id: str
    status: str
    queue: str
    spec: dict[str, Any]
    ahead: int | None


def public_page(session: Session, rows: Sequence[Row[Any]], cache: PublicCache,
                lost_after_s: float = 30.0, fleet: Fleet | None = None) -> list[JobPublic]:
    """JobPublic of a page read with PAGE_COLUMNS: the shown versions from cache, the
    others read in full in one more statement; pending reasons computed afresh."""
    shown: dict[str, JobPublic] = {}
    missing = []
    for r in rows:
        cached = cache.get(_version(r))
        if cached is None:
            missing.append(r.id)
        else:
            shown[r.id] = cached
    if missing:  # a full read is as new as or newer than the page's: show it
        for full in session.connection().execute(_SOME_JOBS, {"ids": missing}):
            shown[full.id] = cache.put(_version(full), _public(full, None))
    rows = [r for r in rows if r.id in shown]  # not gone between the two reads
    queued = [_Queued(r.id, r.status, r.queue, shown[r.id].spec, r.ahead)
              for r in rows if r.status == JobStatus.QUEUED.value]
    reasons = workers.pending_reasons(session, queued, lost_after_s, fleet)
    page = []
    for r in rows:
        job = shown[r.id]
        if job.status == JobStatus.QUEUED.value and r.id in reasons:
            job = job.model_copy(update={"pending_reason": reasons[r.id]})
        page.append(job)
    return page


def _public(job: Row[Any], pending_reason: str | None) -> JobPublic:
    error = (JobError(type=job.error_type, message=job.error_message or "")
             if job.error_type else None)
    return JobPublic(
        id=job.id, name=job.name, framework=job.framework, status=job.status,
        attempt=job.attempt, worker=job.worker, priority=job.priority,
        created_at=job.created_at, updated_at=job.updated_at, started_at=job.started_at,
        finished_at=job.finished_at, heartbeat_at=job.heartbeat_at,
        progress=Progress(epoch=job.progress_epoch, epochs=job.progress_epochs),
        metrics=job.metrics, best=job.best, error=error, pending_reason=pending_reason,
        spec=job.spec)


def metrics(session: Session, job: Job) -> list[dict[str, Any]]:
    """One row per epoch, in order."""
    rows = session.scalars(select(EpochMetrics).where(EpochMetrics.job_id == job.id)
                           .order_by(EpochMetrics.epoch))
    return [{"epoch": r.epoch, **r.values} for r in rows]


def events(session: Session, job: Job, after_id: int = 0, limit: int = 1000) -> list[JobEvent]:
    """The job's events after after_id, oldest first."""
    return list(session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.id > after_id)
        .order_by(JobEvent.id).limit(limit)))


def checkpoints(session: Session, job: Job) -> list[tuple[Checkpoint, Blob]]:
    """The job's complete checkpoints, oldest first."""
    rows = session.execute(
        select(Checkpoint, Blob).join(Blob, Blob.id == Checkpoint.blob_id)
        .where(Checkpoint.job_id == job.id, Blob.complete.is_(True))
        .order_by(Checkpoint.epoch, Checkpoint.id))
    return [(c, b) for c, b in rows.tuples()]


DEFAULT_FORMAT = {"pytorch": "torchscript", "keras": "keras"}
FORMATS = {"pytorch": ("torchscript", "state_dict", "onnx"), "keras": ("keras", "onnx")}


def model_artifact(session: Session, job: Job, fmt: str | None) -> tuple[Artifact, Blob]:
    """The stored model of a succeeded job in format fmt."""
    fmt = fmt or DEFAULT_FORMAT[job.framework]
    if fmt not in FORMATS[job.framework]:
        raise InvalidInput([problem(("format",), f"{job.framework} jobs export "
                                    + ", ".join(FORMATS[job.framework]) + f", not {fmt!r}")])
    if job.status != JobStatus.SUCCEEDED.value:
        raise ModelNotReady(f"job {job.id} is {job.status}; the model is ready once it has "
                            "succeeded")
    row = session.execute(
        select(Artifact, Blob).join(Blob, Blob.id == Artifact.blob_id)
        .where(Artifact.job_id == job.id, Artifact.format == fmt, Blob.complete.is_(True))
    ).tuples().one_or_none()
    if row is None:
        reason = ((job.model_card or {}).get("unavailable_formats") or {}).get(fmt)
        if reason:
            raise ExportUnavailable(f"job {job.id} has no {fmt} export: {reason}")
        raise NotFound(f"job {job.id} has no {fmt} export")
    return row


def builtin_dataset_info(name: str) -> dict[str, Any]:
    d = BUILTIN_DATASETS[name]
    return {"id": d.name, "name": d.name, "source": "builtin", "task": d.task,
            "n_samples": d.n_samples, "sample_shape": list(d.sample_shape),
            "num_classes": d.num_classes or None, "description": d.description}
