"""Scheduling a person can feel (ADR 0007), on real Postgres: interactive jobs before batch ones, owners
taking turns within a priority, and no head-of-line blocking behind a provider's limits."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from imagen_worker.jobs import submit_job
from imagen_worker.limits import set_limit
from imagen_worker.providers.openai import OpenAIProvider
from imagen_worker.queue import JobContext, WorkerConfig
from imagen_worker.scheduling import BATCH, INTERACTIVE
from imagen_worker.spec import ImagePromptSpec

from ..fakes.openai_server import FakeOpenAI
from ..helpers import local_pipeline, running_worker, wait_for_status, wait_until

pytestmark = pytest.mark.asyncio

A = uuid.UUID("00000000-0000-4000-8000-0000000000f1")
B = uuid.UUID("00000000-0000-4000-8000-0000000000f2")


class StartLog:
    """The handler of these tests: records which job started when, then works `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: list[uuid.UUID] = []

    async def __call__(self, ctx: JobContext) -> None:
        self.started.append(ctx.job.id)
        await asyncio.sleep(self.seconds)

    async def started_ahead(self, queue: Callable[[], Awaitable[uuid.UUID]], among: set[uuid.UUID]) -> int:
        """Once the backlog is under way (20 started), queue one job with `queue` and wait for it to
        start: how many of `among` started between its INSERT and its start."""
        await wait_until(lambda: len(self.started) >= 20, "the backlog under way")
        before = len(self.started)
        job_id = await queue()
        await wait_until(lambda: job_id in self.started, "the job queued last started", timeout=10)
        return sum(1 for j in self.started[before : self.started.index(job_id)] if j in among)


async def backlog(db: asyncpg.Connection, owner: uuid.UUID, n: int, priority: int) -> set[uuid.UUID]:
    rows = await db.fetch(
        "insert into imagen.jobs (owner_user_id, prompt, priority) select $1, 'backlog', $3"
        " from generate_series(1, $2) returning id",
        owner,
        n,
        priority,
    )
    return {r["id"] for r in rows}


async def one_job(db: asyncpg.Connection, owner: uuid.UUID, priority: int) -> uuid.UUID:
    job_id: uuid.UUID = await db.fetchval(
        "insert into imagen.jobs (owner_user_id, prompt, priority) values ($1, 'me next', $2) returning id",
        owner,
        priority,
    )
    return job_id


@pytest.mark.parametrize("prefetch", [0, 8])
async def test_an_interactive_job_starts_in_the_next_claim_round_behind_500_batch_jobs(
    db: asyncpg.Connection, db_url: str, prefetch: int
) -> None:
    batch = await backlog(db, A, 500, BATCH)
    log = StartLog(0.02)
    config = WorkerConfig(concurrency=2 if prefetch else 4, prefetch=prefetch, poll_interval=0.5)
    async with running_worker(db_url, log, config):
        behind = await log.started_ahead(lambda: one_job(db, A, INTERACTIVE), batch)
    assert behind < 10, f"{behind} batch jobs started between the click's INSERT and its start"
    if prefetch:
        # Claimed at once past the eight batch jobs the worker held ahead, and started at the next free slot.
        assert behind <= 2, f"{behind} batch jobs claimed ahead of the click started before it"


@pytest.mark.parametrize("owners", [1, 10])
async def test_another_owners_job_starts_before_20_more_of_a_2000_job_backlog(
    db: asyncpg.Connection, db_url: str, owners: int
) -> None:
    queued: set[uuid.UUID] = set()
    for i in range(owners):
        queued |= await backlog(db, uuid.UUID(int=A.int + 100 + i), 2000 // owners, BATCH)
    log = StartLog(0.01)
    async with running_worker(db_url, log, WorkerConfig(concurrency=4, poll_interval=0.5)):
        behind = await log.started_ahead(lambda: one_job(db, B, BATCH), queued)
    assert behind < 20, f"{behind} backlog jobs started between the other owner's INSERT and its start"


async def test_one_owner_alone_keeps_first_in_first_out_and_owners_alternate(db: asyncpg.Connection) -> None:
    """The claim order itself: one owner's jobs in the order they were queued, two owners' interleaved
    from the head, whenever each started queueing."""
    a = [await one_job(db, A, BATCH) for _ in range(4)]
    b = [await one_job(db, B, BATCH) for _ in range(2)]
    order = [
        r["id"]
        for r in await db.fetch("select id from imagen.jobs where status = 'pending' order by priority, vtime, run_at")
    ]
    assert order == [a[0], b[0], a[1], b[1], a[2], a[3]]


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def test_jobs_of_a_rate_limited_provider_hold_no_worker_slot_while_they_wait(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    # One OpenAI call at a time and six a minute (a token every 10 s, burst 1); twenty OpenAI jobs queued
    # ahead of twenty local ones, on one worker of four slots.
    await set_limit(db, "openai", max_concurrent=1, requests_per_minute=6)
    spec = {"quality": "low", "size": "1024x1024"}
    slow = [
        await submit_job(
            db, ImagePromptSpec(prompt=f"openai {i}", **spec), owner_user_id=A, provider="openai", model="gpt-image-1"
        )
        for i in range(20)
    ]
    fast = [
        await submit_job(db, ImagePromptSpec(prompt=f"local {i}", size="256x256"), owner_user_id=A) for i in range(20)
    ]
    provider = OpenAIProvider(api_key=fake.api_key, base_url=fake.base_url)
    pipeline = local_pipeline(tmp_path, {"openai": lambda: provider})
    try:
        async with running_worker(db_url, pipeline, WorkerConfig(concurrency=4, poll_interval=5)):
            start = await db.fetchval("select clock_timestamp()")
            started = time.monotonic()
            await wait_for_status(db, fast, ["done"], timeout=30)
            local_done = await db.fetchval("select max(completed_at) from imagen.jobs where id = any($1::uuid[])", fast)
            # Three tokens: at the start, 10 s and 20 s in.
            await wait_until(
                lambda: db.fetchval(
                    "select count(*) >= 3 from imagen.jobs where id = any($1::uuid[]) and status = 'done'", slow
                ),
                "three OpenAI jobs done",
                timeout=40,
            )
            elapsed = time.monotonic() - started
    finally:
        await provider.aclose()
    assert (local_done - start).total_seconds() < 3, "local jobs waited behind the rate-limited provider"
    rows = await db.fetch(
        "select status, attempts, started_at from imagen.jobs where id = any($1::uuid[]) order by started_at", slow
    )
    ran = [r for r in rows if r["status"] != "pending"]
    assert {r["status"] for r in ran} == {"done"}, "an OpenAI job failed"
    assert all(r["attempts"] == 1 for r in ran), "an attempt was charged for waiting"
    assert all(r["attempts"] == 0 and r["started_at"] is None for r in rows if r["status"] == "pending")
    gaps = [(b["started_at"] - a["started_at"]).total_seconds() for a, b in itertools.pairwise(ran)]
    assert all(g >= 10 - 0.05 for g in gaps), f"OpenAI calls closer than 6 a minute: {gaps}"
    # Advancing at the limit: the third started at its token, give or take the machine's load.
    assert len(ran) >= 3 and elapsed < 20 + 8, f"the OpenAI jobs fell behind their rate: {gaps}, {elapsed:.1f} s"
    # Waiting wrote nothing: the jobs still queued have no events, the ones that ran only theirs.
    waited = [
        r for r in await db.fetch("select id from imagen.jobs where id = any($1::uuid[]) and status = 'pending'", slow)
    ]
    assert (
        await db.fetchval(
            "select count(*) from imagen.job_events where job_id = any($1::uuid[])", [r["id"] for r in waited]
        )
        == 0
    )
    assert len(fake.requests) == len(ran)
