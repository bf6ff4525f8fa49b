"""The worker through database failures that are not plain lost connections."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from imagen_worker.queue import JobContext, JobResult, WorkerConfig

from ..helpers import running_worker, wait_for_status

OWNER = uuid.uuid4()
pytestmark = pytest.mark.asyncio


async def _insert(db: asyncpg.Connection) -> uuid.UUID:
    job_id: uuid.UUID = await db.fetchval(
        "insert into imagen.jobs (owner_user_id, prompt) values ($1, 'x') returning id", OWNER
    )
    return job_id


async def test_a_connection_left_mid_exchange_retries_the_job_instead_of_failing_it(
    db: asyncpg.Connection, db_url: str
) -> None:
    calls = 0

    async def handler(ctx: JobContext) -> JobResult | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")
        return None

    config = WorkerConfig(poll_interval=0.1, retry_base_seconds=0.05, retry_cap_seconds=0.1)
    async with running_worker(db_url, handler, config):
        job_id = await _insert(db)
        assert (await wait_for_status(db, [job_id]))[job_id] == "done"
    assert calls == 2
    assert await db.fetchval("select attempts from imagen.jobs where id = $1", job_id) == 2


async def test_a_failure_that_cannot_be_recorded_frees_the_slot_and_the_lease_returns_the_job(
    db: asyncpg.Connection, db_url: str
) -> None:
    calls = 0

    async def handler(ctx: JobContext) -> JobResult | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the provider broke")
        return None

    config = WorkerConfig(poll_interval=0.1, lease_seconds=1.0, concurrency=1)
    async with running_worker(db_url, handler, config) as worker:
        real = worker._retrying

        async def failing_write(make: Any, what: str, attempts: int | None = None) -> Any:
            if what == "fail":
                raise RuntimeError("the database answered nonsense")
            return await real(make, what, attempts)

        worker._retrying = failing_write  # type: ignore[method-assign]
        job_id = await _insert(db)
        # The unrecorded failure leaves the job running under an expiring lease; the reaper returns
        # it and the freed slot runs it again.
        assert (await wait_for_status(db, [job_id], timeout=20))[job_id] == "done"
    assert calls == 2
