"""What a study request carries and what the API returns for studies and their trials."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from app.core.spec import JobSpec

# Limits on one study request (docs/studies.md says each).
MAX_SPACE_PARAMS = 32
MAX_CHOICES = 100
MAX_TRIALS = 1000
MAX_CONCURRENT_TRIALS = 64
MAX_GRID_POINTS = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UniformDist(_Strict):
    type: Literal["uniform"]
    low: float
    high: float
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> UniformDist:
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class LogUniformDist(_Strict):
    type: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> LogUniformDist:
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class IntDist(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntDist:
        if self.low > self.high:
            raise ValueError("low must not be above high")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log needs low >= 1 and a step of 1")
        return self


ChoiceValue = str | int | float | bool | None | dict[str, Any] | list[Any]


class ChoiceDist(_Strict):
    type: Literal["choice"]
    values: list[ChoiceValue] = Field(min_length=1, max_length=MAX_CHOICES)


Distribution = Annotated[UniformDist | LogUniformDist | IntDist | ChoiceDist,
                         Field(discriminator="type")]

SPACE: TypeAdapter[dict[str, Distribution]] = TypeAdapter(dict[str, Distribution])


class Objective(_Strict):
    metric: str = Field(min_length=1, max_length=100)
    mode: Literal["min", "max"]
    goal: float | None = None  # the study ends once a trial reaches it


class Searcher(_Strict):
    name: Literal["grid", "random", "tpe", "asha"]
    max_trials: int = Field(ge=1, le=MAX_TRIALS)
    max_concurrent_trials: int = Field(1, ge=1, le=MAX_CONCURRENT_TRIALS)
    max_failed_trials: int | None = Field(None, ge=0)  # the study fails above it; None: no cap
    seed: int = Field(0, ge=0, le=2**31 - 1)
    # asha only
    min_epochs: int | None = Field(None, ge=1)
    reduction_factor: int | None = Field(None, ge=2, le=10)
    max_rungs: int | None = Field(None, ge=1, le=10)
    sampler: Literal["random", "tpe"] | None = None

    @model_validator(mode="after")
    def _asha_fields(self) -> Searcher:
        asha_only = [f for f in ("min_epochs", "reduction_factor", "max_rungs", "sampler")
                     if getattr(self, f) is not None]
        if self.name != "asha" and asha_only:
            raise ValueError(", ".join(asha_only) + " only apply to the asha searcher")
        if self.name == "asha":
            self.min_epochs = self.min_epochs or 1
            self.reduction_factor = self.reduction_factor or 3
            self.max_rungs = self.max_rungs or 3
            self.sampler = self.sampler or "tpe"
        return self


class StudyCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    base: JobSpec
    space: dict[str, Distribution] = Field(min_length=1, max_length=MAX_SPACE_PARAMS)
    objective: Objective
    searcher: Searcher


class StudyPatch(_Strict):
    max_trials: int | None = Field(None, ge=1, le=MAX_TRIALS)
    max_concurrent_trials: int | None = Field(None, ge=1, le=MAX_CONCURRENT_TRIALS)


class BestTrial(BaseModel):
    number: int
    job_id: str | None
    params: dict[str, Any]
    value: float
    epoch: int | None


class StudyPublic(BaseModel):
    id: str
    name: str
    state: str
    end_reason: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    objective: dict[str, Any]
    searcher: dict[str, Any]
    space: dict[str, Any]
    base: dict[str, Any]
    rungs: list[int] | None  # asha: the epoch budget of each rung
    trials: dict[str, int]  # count per trial state, and "total"
    epochs_trained: int
    best_trial: BestTrial | None


class StudiesPublic(BaseModel):
    data: list[StudyPublic]
    next_cursor: str | None


class TrialPublic(BaseModel):
    number: int
    job_id: str | None
    job_status: str | None
    state: str
    pruned: bool
    params: dict[str, Any]
    value: float | None
    value_epoch: int | None
    epochs_trained: int
    rung: int | None
    error: str | None
    created_at: datetime
    updated_at: datetime
