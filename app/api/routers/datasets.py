"""/v1/datasets: what a job can train on, builtin or uploaded."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.api.deps import (
    BlobStoreDep,
    OwnerDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    UploaderDep,
)
from app.api.errors import COMMON_ERRORS, NOT_FOUND, NOT_FOUND_OR_CONFLICT, error_responses
from app.core.catalog import BUILTIN_DATASETS, BUILTIN_NAMES, SYNTHETIC
from app.core.errors import Conflict, InvalidInput, PayloadTooLarge, problem
from app.schemas.datasets import DatasetsPublic, UploadedDatasetPublic
from app.schemas.jobs import DatasetPublic
from app.services import datasets as dataset_service
from app.services.jobs import builtin_dataset_info

UPLOAD_PATH = "/v1/datasets"
router = APIRouter(prefix=UPLOAD_PATH, tags=["datasets"], responses=COMMON_ERRORS)

SYNTHETIC_INFO = DatasetPublic(
    id=SYNTHETIC, name=SYNTHETIC, source="builtin", task="classification", n_samples=None,
    sample_shape=None, num_classes=None,
    description="generated, learnable classification data: give n_samples, sample_shape "
                "([D] or [H, W, C]), num_classes and seed in the job's dataset spec")

UPLOAD_FIELDS = ("name", "description", "format", "target", "task", "image_size")
# Room in a request body for the form fields and part headers beside the file.
FORM_OVERHEAD_BYTES = 64 * 1024

UPLOAD_OPENAPI = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "additionalProperties": False,
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": ".npz (x, y[, x_val, y_val]), .csv (header row) or .zip "
                                "(CLASS_NAME/*.png|*.jpg)"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "format": {"type": "string", "enum": ["npz", "csv", "zip"],
                   "description": "when the file name does not say"},
        "target": {"type": "string",
                   "description": "CSV: the label column (default: a column named label or "
                                  "target)"},
        "task": {"type": "string", "enum": ["classification", "regression"]},
        "image_size": {"type": "string", "pattern": r"^\s*[0-9]+\s*[xX]\s*[0-9]+\s*$",
                       "description": "zip: HEIGHTxWIDTH, e.g. 28x28, each side 1 to 4096"},
    }}}}}}


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the upload is larger than {limit} bytes, the most this service "
                           "accepts (TRAINERY_MAX_UPLOAD_BYTES)")


async def _bounded(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    """The request body, cut off (413) as soon as it passes limit: never spooled whole."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit + FORM_OVERHEAD_BYTES:
            raise _too_large(limit)
        yield chunk


async def _read_form(request: Request, limit: int) -> FormData:
    """The multipart form with one file part, the file spooled to disk as it arrives."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput([problem(("file",), "send multipart/form-data with the data in a "
                                    "part named 'file'", "invalid_dataset")])
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + FORM_OVERHEAD_BYTES:
        raise _too_large(limit)
    parser = MultiPartParser(request.headers, _bounded(request.stream(), limit), max_files=1,
                             max_fields=len(UPLOAD_FIELDS))
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise InvalidInput([problem(("file",), f"the multipart body is not valid: {exc.message}",
                                    "invalid_dataset")]) from exc


@router.post("", status_code=201, response_model=UploadedDatasetPublic,
             openapi_extra=UPLOAD_OPENAPI,
             responses={200: {"model": UploadedDatasetPublic,
                              "description": "the same upload was stored before"},
                        **error_responses(413)})
async def upload_dataset(request: Request, response: Response, factory: SessionFactoryDep,
                         blobs: BlobStoreDep, settings: SettingsDep,
                         owner: UploaderDep) -> UploadedDatasetPublic:
    """Upload a dataset (multipart: `file` and optional fields); 201 new, 200 already stored."""
    form = await _read_form(request, settings.max_upload_bytes)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput([problem(("file",), "attach the data as a multipart file part "
                                        "named 'file'", "missing")])
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        unknown = sorted(set(fields) - set(UPLOAD_FIELDS))
        if unknown:
            raise InvalidInput([problem((k,), "unknown form field; the upload takes file, "
                                        + ", ".join(UPLOAD_FIELDS), "extra_forbidden")
                                for k in unknown])
        # Hashing, parsing and storing block: they run on a worker thread, not the event loop,
        # at most TRAINERY_MAX_CONVERSIONS at once (parsing holds the arrays in memory).
        async with request.app.state.conversions.slot():
            dataset, created = await run_in_threadpool(
                dataset_service.create_from_upload, factory, blobs, settings, owner, upload.file,
                upload.filename or "", fields)
    finally:
        await form.close()
    response.headers["Location"] = f"/v1/datasets/{dataset.id}"
    if not created:
        response.status_code = 200
    return dataset_service.to_public(dataset)


@router.get("", response_model=DatasetsPublic)
def list_datasets(session: SessionDep, owner: OwnerDep) -> DatasetsPublic:
    """Uploaded datasets (newest first), then the builtin ones."""
    uploads = [dataset_service.to_public(d) for d in dataset_service.list_datasets(session, owner)]
    builtin = [DatasetPublic(**builtin_dataset_info(name)) for name in BUILTIN_DATASETS]
    return DatasetsPublic(data=[*uploads, *builtin, SYNTHETIC_INFO])


@router.get("/{dataset_id}", response_model=UploadedDatasetPublic | DatasetPublic,
            responses=NOT_FOUND)
def get_dataset(dataset_id: str, session: SessionDep,
                owner: OwnerDep) -> UploadedDatasetPublic | DatasetPublic:
    if dataset_id == SYNTHETIC:
        return SYNTHETIC_INFO
    if dataset_id in BUILTIN_DATASETS:
        return DatasetPublic(**builtin_dataset_info(dataset_id))
    return dataset_service.to_public(dataset_service.get_dataset(session, dataset_id, owner))


@router.delete("/{dataset_id}", status_code=204,
               responses=NOT_FOUND_OR_CONFLICT)
def delete_dataset(dataset_id: str, session: SessionDep, blobs: BlobStoreDep,
                   owner: OwnerDep) -> Response:
    """Delete an uploaded dataset and its stored data."""
    if dataset_id in BUILTIN_NAMES:
        raise Conflict(f"{dataset_id!r} is a builtin dataset; only uploads can be deleted")
    dataset_service.delete_dataset(session, blobs, dataset_id, owner)
    return Response(status_code=204)
