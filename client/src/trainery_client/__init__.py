"""The Trainery Python SDK: `Client` and `AsyncClient` over httpx.

Needs only httpx and pydantic: nothing here imports the service (FastAPI,
SQLAlchemy, Celery) or a training framework. See docs/client.md.
"""

from trainery_client._version import __version__
from trainery_client.async_client import AsyncClient
from trainery_client.errors import (
    AuthenticationFailed,
    BadRequest,
    ChecksumMismatch,
    Conflict,
    ConnectionFailed,
    IdempotencyKeyReused,
    InvalidTransition,
    ModelNotReady,
    NotFound,
    ServerError,
    TraineryError,
    ValidationFailed,
    WaitTimeout,
)
from trainery_client.models import (
    STUDY_END_STATES,
    TERMINAL_STATUSES,
    BestTrial,
    Checkpoint,
    Dataset,
    Event,
    Job,
    JobError,
    JobPage,
    MetricRow,
    ModelFile,
    Progress,
    StepBucket,
    StepSeries,
    Study,
    StudyPage,
    StudySnapshot,
    Trial,
)
from trainery_client.retry import NO_RETRY, RetryPolicy
from trainery_client.sync_client import Client

__all__ = [
    "NO_RETRY", "STUDY_END_STATES", "TERMINAL_STATUSES", "AsyncClient", "AuthenticationFailed",
    "BadRequest", "BestTrial", "Checkpoint", "ChecksumMismatch", "Client", "Conflict",
    "ConnectionFailed", "Dataset", "Event", "IdempotencyKeyReused", "InvalidTransition", "Job",
    "JobError", "JobPage", "MetricRow", "ModelFile", "ModelNotReady", "NotFound", "Progress",
    "RetryPolicy", "ServerError", "StepBucket", "StepSeries", "Study", "StudyPage", "StudySnapshot",
    "TraineryError", "Trial", "ValidationFailed", "WaitTimeout", "__version__",
]
