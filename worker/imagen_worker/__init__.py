"""imagen-worker: the imagen-canvas job queue, image pipeline, providers, storage and CLI."""

from __future__ import annotations

from .config import Settings
from .db import connect, create_pool, resolve_database_url
from .errors import (
    ConfigError,
    DatabaseError,
    ImagenError,
    JobError,
    JobNotFound,
    MigrationError,
    PermanentJobError,
    RetryableJobError,
    SpecError,
    StorageError,
    StorageRejected,
    StorageUnavailable,
)
from .jobs import Job, default_owner_id, hub_owner_id, local_owner_id, submit_job
from .queue import ImageRecord, JobContext, JobResult, Worker, WorkerConfig
from .spec import ImagePromptSpec, parse_spec

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DatabaseError",
    "ImagePromptSpec",
    "ImageRecord",
    "ImagenError",
    "Job",
    "JobContext",
    "JobError",
    "JobNotFound",
    "JobResult",
    "MigrationError",
    "PermanentJobError",
    "RetryableJobError",
    "Settings",
    "SpecError",
    "StorageError",
    "StorageRejected",
    "StorageUnavailable",
    "Worker",
    "WorkerConfig",
    "__version__",
    "connect",
    "create_pool",
    "default_owner_id",
    "hub_owner_id",
    "local_owner_id",
    "parse_spec",
    "resolve_database_url",
    "submit_job",
]
