"""What the API returns, as typed objects.

Unknown fields are kept (`extra="allow"`): the API contract only grows, so a newer
server never breaks an older client.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict[str, Any]:
        """The object as JSON-ready data: what the server sent, nothing the client made up."""
        return self.model_dump(mode="json", exclude_unset=True)


class Progress(ApiModel):
    epoch: int = 0
    epochs: int = 0


class JobError(ApiModel):
    type: str
    message: str = ""


class Job(ApiModel):
    id: str
    name: str = ""
    framework: str = ""
    status: str
    attempt: int = 0
    worker: str | None = None
    priority: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    progress: Progress = Progress()
    metrics: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    error: JobError | None = None
    pending_reason: str | None = None
    spec: dict[str, Any] = {}

    @property
    def is_terminal(self) -> bool:
        """Whether the job has finished (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES


class JobPage(ApiModel):
    data: list[Job]
    next_cursor: str | None = None


class MetricRow(ApiModel):
    """One epoch: `loss`, `accuracy` or `mae`, their `val_` twins, `lr`, `epoch_time_s`."""

    epoch: int
    loss: float | None = None
    accuracy: float | None = None
    mae: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_mae: float | None = None
    lr: float | None = None
    epoch_time_s: float | None = None

    def values(self) -> dict[str, Any]:
        """Every metric the server sent for the epoch, by name (without `epoch`)."""
        return {k: v for k, v in self.to_json().items() if k != "epoch"}


class StepBucket(ApiModel):
    """One metric's values per bucket of steps: the lowest, the highest and the last."""

    min: list[float | None]
    max: list[float | None]
    last: list[float | None]


class StepSeries(ApiModel):
    """The step series (`training.log_every_steps`), downsampled by the server to at most
    `max_points` buckets of `bucket_steps` steps; `steps` is each bucket's last step."""

    series: str = "steps"
    max_points: int
    bucket_steps: int
    steps: list[int]
    metrics: dict[str, StepBucket]


class Event(ApiModel):
    """A state change (`kind="state"`), an epoch's metrics (`"metrics"`) or a log line (`"log"`)."""

    id: int
    ts: datetime
    kind: str
    attempt: int = 0
    from_status: str | None = None
    to_status: str | None = None
    message: str = ""
    data: dict[str, Any] | None = None


class Checkpoint(ApiModel):
    epoch: int
    attempt: int = 0
    size: int
    sha256: str
    metrics: dict[str, Any] | None = None
    created_at: datetime | None = None


class Dataset(ApiModel):
    """A builtin or uploaded dataset; the upload-only fields are None for builtin ones."""

    id: str
    name: str = ""
    source: str = ""
    task: str = ""
    n_samples: int | None = None
    sample_shape: list[int] | None = None
    num_classes: int | None = None
    description: str = ""
    format: str | None = None
    n_val: int | None = None
    dtype: str | None = None
    class_names: list[str] | None = None
    feature_names: list[str] | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    created_at: datetime | None = None


class ModelFile(ApiModel):
    """A downloaded model: where it was saved and its verified sha256."""

    path: Path
    sha256: str
    size: int
    media_type: str = ""


STUDY_END_STATES = frozenset({"succeeded", "failed", "cancelled"})


class BestTrial(ApiModel):
    number: int
    job_id: str | None = None
    params: dict[str, Any] = {}
    value: float
    epoch: int | None = None


class Study(ApiModel):
    """A hyperparameter study: its request, where it stands, and its best trial so far."""

    id: str
    name: str = ""
    state: str
    end_reason: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    objective: dict[str, Any] = {}
    searcher: dict[str, Any] = {}
    space: dict[str, Any] = {}
    base: dict[str, Any] = {}
    rungs: list[int] | None = None
    trials: dict[str, int] = {}
    epochs_trained: int = 0
    best_trial: BestTrial | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the study has ended (succeeded, failed or cancelled)."""
        return self.state in STUDY_END_STATES


class StudyPage(ApiModel):
    data: list[Study]
    next_cursor: str | None = None


class Trial(ApiModel):
    """One trial of a study: an ordinary job (`job_id`) trained with `params`."""

    number: int
    job_id: str | None = None
    job_status: str | None = None
    state: str
    pruned: bool = False
    params: dict[str, Any] = {}
    value: float | None = None
    value_epoch: int | None = None
    epochs_trained: int = 0
    rung: int | None = None
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class StudySnapshot(ApiModel):
    """What `follow_study` emits: the study and its trials, read together."""

    study: Study
    trials: list[Trial]
