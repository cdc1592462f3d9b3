"""/v1/datasets: what a job can train on."""

from __future__ import annotations

from fastapi import APIRouter

from app.catalog import BUILTIN_DATASETS, SYNTHETIC
from app.errors import NotFound
from app.schemas.jobs import DatasetPublic
from app.services.jobs import builtin_dataset_info

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

SYNTHETIC_INFO = DatasetPublic(
    id=SYNTHETIC, name=SYNTHETIC, source="builtin", task="classification", n_samples=None,
    sample_shape=None, num_classes=None,
    description="generated, learnable classification data: give n_samples, sample_shape "
                "([D] or [H, W, C]), num_classes and seed in the job's dataset spec")


@router.get("", response_model=dict[str, list[DatasetPublic]])
def list_datasets() -> dict[str, list[DatasetPublic]]:
    """The builtin datasets (uploads join this list when they arrive)."""
    data = [DatasetPublic(**builtin_dataset_info(name)) for name in BUILTIN_DATASETS]
    return {"data": [*data, SYNTHETIC_INFO]}


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str) -> DatasetPublic:
    if dataset_id == SYNTHETIC:
        return SYNTHETIC_INFO
    if dataset_id not in BUILTIN_DATASETS:
        raise NotFound(f"no dataset with id {dataset_id!r}")
    return DatasetPublic(**builtin_dataset_info(dataset_id))
