"""Owner ids, the claimed Job, and the queue's own insert (`submit_job`: no pending cap, no RLS; for workers
of other handlers and for tests). What users ask for goes through imagen_worker.service."""

from __future__ import annotations

import getpass
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .errors import ConfigError
from .queries import q
from .spec import ImagePromptSpec

# Owner ids of single-user installs are derived from the login name, so the CLI, the worker and
# JupyterLab on one machine agree without configuration.
_LOCAL_NAMESPACE = uuid.UUID("5b0c0f4e-2f1d-4c59-9d0a-8f6f1f5c7e21")


_HUB_NAMESPACE = uuid.UUID("a3e1c2d4-6b7f-4e0a-9c15-2f8d4b6a7e90")


def local_owner_id(username: str | None = None) -> uuid.UUID:
    """The owner id of a local (non-JupyterHub) user."""
    return uuid.uuid5(_LOCAL_NAMESPACE, username or getpass.getuser())


def hub_owner_id(hub_user: str) -> uuid.UUID:
    """The owner id of a JupyterHub user, from the hub's user name."""
    return uuid.uuid5(_HUB_NAMESPACE, hub_user)


def default_owner_id(environ: Mapping[str, str] | None = None) -> uuid.UUID:
    """Whose jobs this process works with: IMAGEN_OWNER_USER_ID when set; under JupyterHub, the user the
    server belongs to (JUPYTERHUB_USER, not whoever is calling); else this login's local owner id.
    The CLI, the server extension, its kernels and the notebook API all agree on it."""
    env = os.environ if environ is None else environ
    configured = (env.get("IMAGEN_OWNER_USER_ID") or "").strip()
    if configured:
        try:
            return uuid.UUID(configured)
        except ValueError:
            raise ConfigError(f"IMAGEN_OWNER_USER_ID={configured!r} is not a UUID") from None
    hub_user = (env.get("JUPYTERHUB_USER") or "").strip()
    if hub_user:
        return hub_owner_id(hub_user)
    return local_owner_id()


@dataclass(frozen=True)
class Job:
    """A claimed job, as the worker hands it to a handler."""

    id: uuid.UUID
    owner_user_id: uuid.UUID
    canvas_id: uuid.UUID | None
    node_id: str | None
    provider: str
    model: str
    prompt: str
    spec: dict[str, Any]
    priority: int
    run_at: datetime
    attempts: int
    max_attempts: int
    created_at: datetime
    provider_job_id: str | None
    # The job's place in its owner's turn within its priority (fair share, ADR 0007).
    vtime: int = 0
    # The claim already took the provider's token and slot for this job (imagen.claim_within_limits).
    slot_reserved: bool = False

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> Job:
        return cls(**{f: r[f] for f in _CLAIMED_FIELDS}, slot_reserved=bool(r.get("slot_reserved")))


_CLAIMED_FIELDS = tuple(f for f in Job.__dataclass_fields__ if f != "slot_reserved")


async def submit_job(
    conn: asyncpg.Connection | asyncpg.Pool,
    spec: ImagePromptSpec,
    *,
    owner_user_id: uuid.UUID,
    provider: str = "local",
    model: str = "local-v1",
    priority: int = 0,
    max_attempts: int = 3,
    run_at: datetime | None = None,
    canvas_id: uuid.UUID | None = None,
    node_id: str | None = None,
    idempotency_key: str | None = None,
) -> uuid.UUID:
    """Queue one job; with an idempotency key, a repeat returns the first job's id."""
    job_id = await conn.fetchval(
        q("insert_job"),
        owner_user_id,
        provider,
        model,
        spec.prompt,
        spec.stored_spec(),
        priority,
        max_attempts,
        run_at,
        canvas_id,
        node_id,
        idempotency_key,
    )
    if job_id is None:
        job_id = await conn.fetchval(q("job_by_idempotency_key"), owner_user_id, idempotency_key)
    assert isinstance(job_id, uuid.UUID)
    return job_id
