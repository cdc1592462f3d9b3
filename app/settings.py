"""The one settings object, read from TRAINERY_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("var")
# What a runner holds beyond its job's estimate: the framework and the project imported
# (~0.5 GB of data segment for either), thread stacks, allocator caches.
RUNNER_OVERHEAD_BYTES = 2 << 30


class Limits(BaseSettings):
    """Caps on what one job spec may ask for, so one request cannot take the service down."""

    model_config = SettingsConfigDict(env_prefix="TRAINERY_LIMIT_", extra="ignore")

    max_epochs: int = Field(1000, ge=1)
    max_layers: int = Field(64, ge=1)
    max_units: int = Field(8192, ge=1)
    max_batch_size: int = Field(65536, ge=1)
    max_runtime_s: int = Field(7 * 24 * 3600, ge=1)
    max_synthetic_samples: int = Field(1_000_000, ge=1)
    max_sample_elements: int = Field(1_000_000, ge=1)
    # Estimated at submit from the spec alone (app/core/estimate.py, docs/operations.md):
    # the model's trainable parameters, the bytes of a synthetic dataset, and the memory
    # one job needs (weights, gradients, optimizer state, one batch's activations, the
    # dataset), which must fit what a worker gives a job.
    max_params: int = Field(100_000_000, ge=1)
    max_dataset_bytes: int = Field(2 << 30, ge=1)
    job_memory_bytes: int = Field(8 << 30, ge=1)


class Settings(BaseSettings):
    """Service settings; validated once at start."""

    model_config = SettingsConfigDict(env_prefix="TRAINERY_", extra="ignore")

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str = ""
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Redis redelivers a message not acknowledged within this time, even while
    # its job still runs; the claim in SQL makes that redelivery harmless.
    broker_visibility_timeout_s: float = Field(3600.0, gt=0)
    # Prefix for the Celery queue names, so that several deployments (or test
    # runs) can share one Redis without taking each other's jobs.
    queue_prefix: str = "trainery"
    default_owner: str = "default"
    # Refuse requests without an API key (`trainery keys create`); off, requests
    # without one act as default_owner.
    auth_required: bool = False
    # Signs the dashboard's session cookie; unset, one is generated into data_dir/web_secret.
    web_secret: str = ""

    heartbeat_interval_s: float = Field(2.0, gt=0)
    # A running job whose heartbeat is older than this lost its worker.
    worker_lost_after_s: float = Field(30.0, gt=0)
    # Worker losses a job may suffer before it fails with worker_lost.
    max_attempts: int = Field(3, ge=1)
    # An idle worker re-sends the wake-up of a job queued longer than this.
    reconcile_after_s: float = Field(15.0, gt=0)
    maintenance_interval_s: float = Field(2.0, gt=0)
    # How long a runner gets to stop at a batch boundary before it is killed.
    stop_grace_s: float = Field(20.0, gt=0)
    # Fleet: explicit GPU indices ("0,1") win over asking nvidia-smi; with no GPU,
    # cpu_slots CPU workers start. gpu_pool_queues adds pools ("gpu.a100") GPU
    # workers serve; cpu_takes_gpu_jobs lets CPU workers run gpus>=1 jobs on a
    # machine without GPUs (a laptop, CI), with an event saying so.
    gpus: str | None = None
    cpu_slots: int = Field(1, ge=1, le=64)
    # CPU threads a runner's framework computes with (torch intra-op, OpenMP, TF
    # intra-op). Unset, `trainery worker` gives each of its workers an equal share
    # of the machine's cores, so that slots side by side do not oversubscribe them.
    runner_threads: int | None = Field(None, ge=1, le=1024)
    worker_queues: str = ""
    cpu_takes_gpu_jobs: bool = True
    # The most slots (GPUs, or CPU slots on a machine without GPUs) one job may ask
    # for in resources.gpus; a job runs data-parallel on that many slots of one host.
    max_gpus_per_job: int = Field(8, ge=0, le=16)
    # Test-only fault injection for the runner, e.g. "segfault@2" (see docs).
    fault_injection: str = ""
    blob_chunk_bytes: int = Field(1 << 20, ge=1024)
    # Connections each process keeps open to the database (and as many again in
    # overflow for short sessions: readiness, streams, wake-up bookkeeping).
    db_pool_size: int = Field(5, ge=1)
    # API admission: at most api_db_slots requests hold a request unit of work
    # (a database session) at once; the rest wait in line, at most
    # api_queue_max of them for at most api_queue_wait_s, then get 503 with
    # Retry-After. Unset, api_db_slots is db_pool_size: never more requests
    # inside than the pool has connections (docs/ARCHITECTURE.md, Admission).
    api_db_slots: int | None = Field(None, ge=1)
    api_queue_wait_s: float = Field(10.0, gt=0)
    api_queue_max: int = Field(1000, ge=1)
    # Jobs whose last shown version an API process keeps, so that a poll of a page of
    # jobs reads in full only those that changed (app/services/jobs.py: PublicCache);
    # each is a few KB. 0: none kept.
    job_cache_entries: int = Field(2048, ge=0)
    api_retry_after_s: int = Field(2, ge=1)
    worker_name: str = ""
    # Set by `trainery worker` for each GPU worker: the GPU index it is pinned to
    # (its CUDA_VISIBLE_DEVICES), recorded with the worker so that a multi-GPU job's
    # leader can pin each rank to the GPU of the slot it holds.
    slot_device: str = ""
    # A data-parallel job's collective timeout: a rank that hangs this long in an
    # all-reduce fails the group (a rank that dies stops it at once).
    ddp_timeout_s: float = Field(120.0, gt=0)
    runner_python: str = ""
    # Spare runners a worker keeps imported and waiting, so a job's runner starts
    # warm (workers/warmpool.py): "last" one for the framework it ran last, "both"
    # one per framework (more memory), "pytorch" or "keras" that framework's only,
    # "off" none (every runner starts cold).
    warm_runners: Literal["last", "both", "pytorch", "keras", "off"] = "last"
    # On Linux the PyTorch spare is a template that forks each job's runner (a copy of a
    # process that imported and warmed up but never ran a job: milliseconds instead of
    # seconds of CPU per job); false: a spare per job, as for Keras.
    fork_runners: bool = True
    # The data a runner process may allocate (RLIMIT_DATA, set before it starts): past
    # it an allocation fails and the job ends out_of_memory instead of taking the
    # worker's machine down. Unset: limits.job_memory_bytes plus RUNNER_OVERHEAD_BYTES
    # for the framework itself; 0: no cap.
    runner_memory_bytes: int | None = Field(None, ge=0)

    # Request bodies other than dataset uploads (JSON, the dashboard's forms): past this a
    # 413 before anything is parsed, by Content-Length or counted as a chunked body streams.
    max_json_body_bytes: int = Field(1 << 20, ge=1024)

    # Dataset uploads (docs/datasets.md): the largest file accepted, what its
    # archive (zip, npz) may unpack to (the API holds about 1.5 times that in memory while
    # it converts one: 128 MiB keeps a conversion under 256 MB) and how many files it may
    # hold, and the
    # local disk each worker host gives to cached datasets (least recently used go first).
    max_upload_bytes: int = Field(256 << 20, ge=1)
    max_unpacked_bytes: int = Field(128 << 20, ge=1)
    max_upload_files: int = Field(100_000, ge=1)
    dataset_cache_bytes: int = Field(8 << 30, ge=0)
    # Uploads the API converts at once (each holds its arrays in memory, about 1.5 times
    # max_unpacked_bytes); the rest wait up to conversion_wait_s, then 503 with Retry-After.
    max_conversions: int = Field(1, ge=1, le=64)
    conversion_wait_s: float = Field(60.0, gt=0)

    # Artifact storage (docs/operations.md): unset keeps checkpoints, models and
    # datasets as chunked blobs in SQL; "s3://bucket/prefix" puts their bytes in any
    # S3-compatible store (credentials from the usual AWS_* variables) and keeps the
    # metadata in SQL. Uploads go in parts of s3_part_bytes, s3_max_concurrency at a
    # time: the memory one transfer holds. Model downloads redirect to a presigned URL
    # valid s3_presign_ttl_s, signed for s3_public_endpoint_url when clients reach the
    # store by another address than the service does ("stream" relays the bytes instead).
    artifact_url: str = Field("", pattern=r"^$|^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
    s3_endpoint_url: str = ""
    s3_public_endpoint_url: str = ""
    s3_part_bytes: int = Field(8 << 20, ge=5 << 20, le=5 << 30)
    s3_max_concurrency: int = Field(4, ge=1, le=64)
    s3_presign_ttl_s: int = Field(300, ge=1, le=7 * 24 * 3600)
    model_download: Literal["redirect", "stream"] = "redirect"

    # Webhooks (docs/operations.md): targets on loopback, link-local and private networks
    # are refused unless allowed; a failed delivery is retried after base, 2x base, ...
    # (at most an hour apart) for a day.
    webhook_allow_private: bool = False
    webhook_retry_base_s: float = Field(10.0, gt=0)

    # Logs: "json" one object a line, "console" for people, "auto" console on a terminal.
    log_format: Literal["auto", "json", "console"] = "auto"

    limits: Limits = Field(default_factory=Limits)

    def resolved_runner_memory(self) -> int | None:
        """The runner's data limit in bytes, or None for none."""
        if self.runner_memory_bytes is None:
            return self.limits.job_memory_bytes + RUNNER_OVERHEAD_BYTES
        return self.runner_memory_bytes or None

    def resolved_db_slots(self) -> int:
        """How many requests may hold a database session at once."""
        return min(self.api_db_slots or self.db_pool_size, self.db_pool_size)

    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL; an SQLite file under data_dir when none is set."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'trainery.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
