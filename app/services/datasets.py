"""Uploaded datasets: store (content addressed), list, inspect, delete, check a job's use."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from typing import IO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.blobstore import BlobStore
from app.core.dataset_arrays import write_normalised
from app.core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, problem
from app.core.estimate import DataShape, uploaded_data
from app.core.spec import JobSpec
from app.core.states import TERMINAL_STATES
from app.db import transaction
from app.models import Dataset, Job
from app.schemas.datasets import UploadedDatasetPublic
from app.services import dataset_formats as formats
from app.services.dataset_options import UploadOptions, parse_options
from app.settings import Settings

READ_CHUNK = 1 << 20
MAX_NAME = 200
MAX_DESCRIPTION = 2000


class DatasetNotFound(NotFound):
    code = "dataset_not_found"


class DatasetInUse(Conflict):
    code = "dataset_in_use"


def dataset_id(owner: str, sha256: str, options: UploadOptions) -> str:
    """The content address: the same bytes read the same way by the same owner are one dataset."""
    key = json.dumps([owner, sha256, options.as_dict()], sort_keys=True)
    return "ds_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    f.seek(0)
    while chunk := f.read(READ_CHUNK):
        yield chunk


def _hash_upload(upload: IO[bytes], limit: int) -> tuple[str, int]:
    """sha256 and size of the upload, read in chunks; a 413 as soon as it passes the limit."""
    digest, size = hashlib.sha256(), 0
    for chunk in _chunks(upload):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the upload is larger than {limit} bytes, the most this "
                                  "service accepts (TRAINERY_MAX_UPLOAD_BYTES)")
        digest.update(chunk)
    if size == 0:
        raise formats.rejected("the file is empty")
    return digest.hexdigest(), size


def create_from_upload(factory: sessionmaker[Session], blobs: BlobStore, settings: Settings,
                       owner: str, upload: IO[bytes], filename: str,
                       fields: dict[str, str]) -> tuple[Dataset, bool]:
    """Validate, normalise and store an upload; (dataset, created). Blocks: run it off the loop."""
    options = parse_options(filename, fields)
    name = (fields.get("name") or "").strip() or filename.rsplit("/", 1)[-1] or "dataset"
    description = (fields.get("description") or "").strip()
    for field, value, most in (("name", name, MAX_NAME),
                               ("description", description, MAX_DESCRIPTION)):
        if len(value) > most:
            raise InvalidInput([problem((field,), f"the {field} has {len(value)} characters; "
                                        f"at most {most}", "invalid_dataset")])
    sha, size = _hash_upload(upload, settings.max_upload_bytes)
    ds_id = dataset_id(owner, sha, options)
    with factory() as session:
        existing = session.get(Dataset, ds_id)
        if existing is not None:
            return existing, False
    bounds = formats.UploadBounds(settings.max_unpacked_bytes, settings.max_upload_files,
                                  settings.limits.max_sample_elements)
    data = formats.parse(upload, options, bounds)
    with tempfile.TemporaryFile(prefix="trainery-dataset-") as normalised:
        write_normalised(data, normalised)
        info = blobs.write(_chunks(normalised), owner=owner, kind="dataset")
    row = Dataset(
        id=ds_id, owner=owner, name=name, description=description, format=options.format,
        task=data.task, n_samples=int(len(data.x)), n_val=data.n_val,
        sample_shape=data.sample_shape, dtype=str(data.x.dtype),
        num_classes=len(data.class_names) or None,
        class_names=data.class_names, feature_names=data.feature_names,
        options={**options.as_dict(), **data.extra}, size_bytes=size, sha256=sha,
        blob_id=info.id)
    try:
        with transaction(factory) as session:
            session.add(row)
    except IntegrityError:
        # The same upload raced us and won: answer with its dataset, drop our copy.
        blobs.delete(info.id)
        with factory() as session:
            existing = session.get(Dataset, ds_id)
        if existing is None:
            raise
        return existing, False
    except BaseException:
        blobs.delete(info.id)
        raise
    return row, True


def list_datasets(session: Session, owner: str) -> list[Dataset]:
    """The owner's uploaded datasets, newest first."""
    return list(session.scalars(select(Dataset).where(Dataset.owner == owner)
                                .order_by(Dataset.created_at.desc(), Dataset.id)))


def get_dataset(session: Session, ds_id: str, owner: str, *, lock: bool = False) -> Dataset:
    """The dataset, or DatasetNotFound; lock=True holds it (shared) until the transaction ends."""
    stmt = select(Dataset).where(Dataset.id == ds_id, Dataset.owner == owner)
    if lock:
        stmt = stmt.with_for_update(read=True)
    row = session.scalar(stmt)
    if row is None:
        raise DatasetNotFound(f"no dataset with id {ds_id!r}")
    return row


def jobs_using(session: Session, ds_id: str, owner: str) -> list[str]:
    """Ids of the owner's unfinished jobs that train on the dataset."""
    stmt = select(Job.id).where(
        Job.owner == owner, Job.status.not_in([s.value for s in TERMINAL_STATES]),
        Job.spec[("dataset", "id")].as_string() == ds_id)
    return list(session.scalars(stmt))


def delete_dataset(session: Session, blobs: BlobStore, ds_id: str, owner: str) -> None:
    """Remove the dataset and its blob in session; 409 while an unfinished job trains on it.

    An object-store blob loses its object once session commits (the store's delete_in)."""
    row = session.scalar(select(Dataset).where(Dataset.id == ds_id, Dataset.owner == owner)
                         .with_for_update())
    if row is None:
        raise DatasetNotFound(f"no dataset with id {ds_id!r}")
    users = jobs_using(session, ds_id, owner)
    if users:
        raise DatasetInUse(f"dataset {ds_id} is used by unfinished job(s) "
                           + ", ".join(users[:10]) + "; cancel them or wait until they end")
    session.delete(row)
    session.flush()
    blobs.delete_in(session, [row.blob_id])


def check_job_dataset(session: Session, spec: JobSpec, owner: str) -> DataShape | None:
    """At submit: an uploaded dataset must exist and have the job's task (a 422 otherwise);
    its shape for the resource estimates (None for a builtin dataset)."""
    ds_id = spec.dataset.id
    if ds_id is None:
        return None
    try:
        # A shared lock, so a concurrent DELETE waits for this job to be committed and sees it.
        row = get_dataset(session, ds_id, owner, lock=True)
    except DatasetNotFound:
        raise InvalidInput([problem(("dataset", "id"), f"no uploaded dataset with id {ds_id!r}; "
                                    "upload one with POST /v1/datasets, list them with "
                                    "GET /v1/datasets", "not_found")]) from None
    if row.task != spec.task:
        raise InvalidInput([problem(("task",), f"dataset {ds_id} is a {row.task} dataset; set "
                                    f"task to {row.task!r}", "value_error")])
    return uploaded_data(row.n_samples, row.n_val, row.sample_shape, row.dtype, row.num_classes)


def describe(row: Dataset) -> str:
    shape = "x".join(str(d) for d in row.sample_shape)
    what = (f"{row.num_classes} classes: " + ", ".join(row.class_names[:10])
            + (", ..." if len(row.class_names) > 10 else "")
            if row.task == "classification" else "regression targets")
    return f"uploaded {row.format}: {row.n_samples} samples of shape {shape} ({row.dtype}); {what}"


def to_public(row: Dataset) -> UploadedDatasetPublic:
    """The dataset as the API shows it."""
    return UploadedDatasetPublic(
        id=row.id, name=row.name, source="upload", task=row.task, n_samples=row.n_samples,
        sample_shape=list(row.sample_shape), num_classes=row.num_classes,
        description=row.description or describe(row), format=row.format, n_val=row.n_val,
        dtype=row.dtype, class_names=list(row.class_names), feature_names=row.feature_names,
        options=dict(row.options), size_bytes=row.size_bytes, sha256=row.sha256,
        created_at=row.created_at)
