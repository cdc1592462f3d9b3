"""What the API returns for uploaded datasets (builtin ones are DatasetPublic)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from app.schemas.jobs import DatasetPublic


class UploadedDatasetPublic(DatasetPublic):
    format: str
    n_val: int
    dtype: str
    class_names: list[str]
    feature_names: list[str] | None
    options: dict[str, object]
    size_bytes: int
    sha256: str
    created_at: datetime


class DatasetsPublic(BaseModel):
    data: list[UploadedDatasetPublic | DatasetPublic]
