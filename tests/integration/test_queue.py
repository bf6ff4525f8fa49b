"""The queue runtime on real Postgres: wake-up, claims, leases, retries, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from imagen_worker.errors import PermanentJobError, RateLimited, RetryableJobError
from imagen_worker.jobs import submit_job
from imagen_worker.queue import JobContext, JobResult, WorkerConfig
from imagen_worker.spec import ImagePromptSpec

from ..helpers import (
    local_pipeline,
    running_worker,
    wait_for_listeners,
    wait_for_status,
    wait_until,
)

pytestmark = pytest.mark.asyncio

OWNER = uuid.UUID("00000000-0000-4000-8000-000000000001")


async def sql_insert(conn: asyncpg.Connection, prompt: str = "a red fox", **cols: Any) -> uuid.UUID:
    """A job queued by a plain SQL INSERT, as any client (psql, Supabase) would."""
    cols = {"owner_user_id": OWNER, "prompt": prompt, **cols}
    names = ", ".join(cols)
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    job_id = await conn.fetchval(f"insert into imagen.jobs ({names}) values ({params}) returning id", *cols.values())
    assert isinstance(job_id, uuid.UUID)
    return job_id


def recording_handler(
    runs: list[tuple[uuid.UUID, int, float]], then: Callable[[JobContext], Awaitable[JobResult | None]] | None = None
) -> Callable[[JobContext], Awaitable[JobResult | None]]:
    async def handler(ctx: JobContext) -> JobResult | None:
        runs.append((ctx.job.id, ctx.job.attempts, time.monotonic()))
        return await then(ctx) if then else None

    return handler


async def test_job_inserted_by_sql_is_picked_up_via_notify_well_under_the_poll_interval(
    db: asyncpg.Connection, db_url: str
) -> None:
    runs: list[tuple[uuid.UUID, int, float]] = []
    async with running_worker(db_url, recording_handler(runs), WorkerConfig(poll_interval=30)):
        await wait_for_listeners(db)  # the worker is listening; its next poll is ~30 s away
        sent = time.monotonic()
        job_id = await sql_insert(db)
        await wait_for_status(db, [job_id], ["done"], timeout=10)
    assert runs[0][0] == job_id
    assert runs[0][2] - sent < 2.0, "picked up by the poll, not the notification"


async def test_poll_only_worker_picks_up_jobs_by_polling(db: asyncpg.Connection, db_url: str) -> None:
    runs: list[tuple[uuid.UUID, int, float]] = []
    async with running_worker(
        db_url, recording_handler(runs), WorkerConfig(poll_only=True, poll_interval=0.3)
    ) as worker:
        first = await sql_insert(db)
        await wait_for_status(db, [first], ["done"], timeout=10)
        # Queued after the worker found the first: only a later poll can find this one.
        second = await sql_insert(db)
        await wait_for_status(db, [second], ["done"], timeout=10)
        assert worker._listener is None
        listening = await db.fetchval(
            "select count(*) from pg_stat_activity where datname = current_database() and query ilike 'listen%'"
        )
        assert listening == 0
    assert [r[0] for r in runs] == [first, second]


async def test_claims_follow_priority_then_run_at(db: asyncpg.Connection, db_url: str) -> None:
    late = await sql_insert(db, "late", priority=5)
    early = await sql_insert(db, "early", priority=-5)
    middle = await sql_insert(db, "middle", priority=0)
    runs: list[tuple[uuid.UUID, int, float]] = []
    async with running_worker(db_url, recording_handler(runs), WorkerConfig(concurrency=1)):
        await wait_for_status(db, [late, early, middle], ["done"])
    assert [r[0] for r in runs] == [early, middle, late]


async def test_job_scheduled_in_the_future_waits_for_its_run_at(db: asyncpg.Connection, db_url: str) -> None:
    runs: list[tuple[uuid.UUID, int, float]] = []
    async with running_worker(db_url, recording_handler(runs), WorkerConfig(poll_interval=30)):
        await wait_for_listeners(db)
        started = time.monotonic()
        job_id = await db.fetchval(
            "insert into imagen.jobs (owner_user_id, prompt, run_at) values ($1, 'later', now() + interval '1 second') returning id",
            OWNER,
        )
        await wait_for_status(db, [job_id], ["done"], timeout=10)
    assert 0.9 <= runs[0][2] - started < 5, "ran before run_at, or waited for the 30 s poll"


async def test_retryable_errors_back_off_and_then_succeed(db: asyncpg.Connection, db_url: str) -> None:
    runs: list[tuple[uuid.UUID, int, float]] = []

    async def flaky(ctx: JobContext) -> None:
        if ctx.job.attempts < 3:
            raise RetryableJobError("provider answered 503")

    config = WorkerConfig(retry_base_seconds=0.2, poll_interval=0.2)
    async with running_worker(db_url, recording_handler(runs, flaky), config):
        job_id = await sql_insert(db)
        await wait_for_status(db, [job_id], ["done"], timeout=20)
    assert [r[1] for r in runs] == [1, 2, 3]
    gaps = [b[2] - a[2] for a, b in itertools.pairwise(runs)]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3, f"no exponential backoff between attempts: {gaps}"
    row = await db.fetchrow("select attempts, error from imagen.jobs where id = $1", job_id)
    assert row["attempts"] == 3 and row["error"] is None
    retries = await db.fetch(
        "select payload from imagen.job_events where job_id = $1 and payload->>'status' = 'pending' and payload ? 'error'",
        job_id,
    )
    assert [r["payload"]["error"] for r in retries] == ["provider answered 503"] * 2


async def test_retry_after_from_a_rate_limit_is_honoured(db: asyncpg.Connection, db_url: str) -> None:
    runs: list[tuple[uuid.UUID, int, float]] = []

    async def limited(ctx: JobContext) -> None:
        if ctx.job.attempts == 1:
            raise RateLimited("429 Too Many Requests", retry_after=1.5)

    async with running_worker(db_url, recording_handler(runs, limited), WorkerConfig(retry_base_seconds=0.01)):
        job_id = await sql_insert(db)
        await wait_for_status(db, [job_id], ["done"], timeout=20)
    assert runs[1][2] - runs[0][2] >= 1.4


async def test_retryable_error_with_no_attempts_left_fails(db: asyncpg.Connection, db_url: str) -> None:
    async def always(ctx: JobContext) -> None:
        raise RetryableJobError("provider answered 503")

    async with running_worker(db_url, always, WorkerConfig(retry_base_seconds=0.01, poll_interval=0.2)):
        job_id = await sql_insert(db, max_attempts=2)
        await wait_for_status(db, [job_id], ["failed"], timeout=20)
    row = await db.fetchrow("select attempts, error, completed_at from imagen.jobs where id = $1", job_id)
    assert row["attempts"] == 2 and row["error"] == "provider answered 503" and row["completed_at"] is not None


async def test_permanent_error_fails_at_once_with_its_message(db: asyncpg.Connection, db_url: str) -> None:
    runs: list[tuple[uuid.UUID, int, float]] = []

    async def refuse(ctx: JobContext) -> None:
        raise PermanentJobError("the provider refused the prompt: content policy")

    async with running_worker(db_url, recording_handler(runs, refuse)):
        job_id = await sql_insert(db)
        await wait_for_status(db, [job_id], ["failed"])
    row = await db.fetchrow("select attempts, error from imagen.jobs where id = $1", job_id)
    assert len(runs) == 1 and row["attempts"] == 1
    assert row["error"] == "the provider refused the prompt: content policy"


async def test_unexpected_exception_fails_without_a_stack_trace(db: asyncpg.Connection, db_url: str) -> None:
    async def broken(ctx: JobContext) -> None:
        {}["missing"]

    async with running_worker(db_url, broken):
        job_id = await sql_insert(db)
        await wait_for_status(db, [job_id], ["failed"])
    error = await db.fetchval("select error from imagen.jobs where id = $1", job_id)
    assert error == "KeyError: 'missing'"


async def test_job_timeout_fails_the_job_with_timed_out_message(db: asyncpg.Connection, db_url: str) -> None:
    async def slow(ctx: JobContext) -> None:
        await asyncio.sleep(30)

    async with running_worker(db_url, slow, WorkerConfig(job_timeout=0.5)):
        job_id = await sql_insert(db)
        await wait_for_status(db, [job_id], ["failed"], timeout=10)
    row = await db.fetchrow("select error, attempts from imagen.jobs where id = $1", job_id)
    assert row["error"] == "timed out after 0.5 s" and row["attempts"] == 1


async def test_api_key_in_an_exception_never_reaches_jobs_error(
    db: asyncpg.Connection, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-proj-" + "A1b2C3d4" * 6
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    other = "r8_" + "Z9y8X7w6" * 4

    async def leaky(ctx: JobContext) -> None:
        raise RuntimeError(f"401 Unauthorized: Incorrect API key provided: {secret}; fallback token {other}")

    async with running_worker(db_url, leaky):
        job_id = await sql_insert(db)
        await wait_for_status(db, [job_id], ["failed"])
    error = await db.fetchval("select error from imagen.jobs where id = $1", job_id)
    events = await db.fetchval("select string_agg(payload::text, ' ') from imagen.job_events where job_id = $1", job_id)
    for text in (error, events):
        assert secret not in text and secret[:20] not in text and other not in text
    assert error.startswith("RuntimeError: 401 Unauthorized: Incorrect API key provided: ***")


async def test_cancelling_a_pending_job_takes_effect_at_once_and_no_worker_runs_it(
    db: asyncpg.Connection, db_url: str
) -> None:
    job_id = await sql_insert(db)
    assert await db.fetchval("select imagen.cancel_job($1)", job_id) == "cancelled"
    row = await db.fetchrow("select status, completed_at from imagen.jobs where id = $1", job_id)
    assert row["status"] == "cancelled" and row["completed_at"] is not None
    runs: list[tuple[uuid.UUID, int, float]] = []
    async with running_worker(db_url, recording_handler(runs), WorkerConfig(concurrency=1)):
        # Queued after the cancelled job, so behind it in claim order: once this one has run, a claim
        # that took cancelled jobs would have taken that one first.
        after = await sql_insert(db, "queued after the cancelled one")
        await wait_for_status(db, [after], ["done"])
    assert [r[0] for r in runs] == [after], "the handler ran for a cancelled job"
    row = await db.fetchrow("select status, attempts, locked_by from imagen.jobs where id = $1", job_id)
    assert (row["status"], row["attempts"], row["locked_by"]) == ("cancelled", 0, None)


async def test_cancelling_a_running_job_aborts_its_handler(db: asyncpg.Connection, db_url: str, tmp_path: Path) -> None:
    started = asyncio.Event()
    aborted = asyncio.Event()
    reasons: list[str] = []
    pipeline = local_pipeline(tmp_path)

    async def long_job(ctx: JobContext) -> JobResult:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            reasons.append(ctx.stop_reason)
            aborted.set()
            raise
        return await pipeline(ctx)

    async with running_worker(db_url, long_job) as worker:
        # The cancel must reach the handler through imagen_job_signals: once the worker LISTENs. (A job
        # claimed before that, at start-up, would learn of it only at its next heartbeat.)
        await wait_for_listeners(db)
        job_id = await sql_insert(db)
        await asyncio.wait_for(started.wait(), 10)
        t0 = time.monotonic()
        assert await db.fetchval("select imagen.cancel_job($1)", job_id) == "cancelled"
        await asyncio.wait_for(aborted.wait(), 5)
        abort_s = time.monotonic() - t0
        # The worker goes on with other work. (Cleared before the job is queued: the worker can start it
        # before the INSERT's answer reaches this test.)
        started.clear()
        other = await sql_insert(db, "next", spec={"options": {}})
        await asyncio.wait_for(started.wait(), 10)
        aborted.clear()
        assert await db.fetchval("select imagen.cancel_job($1)", other) == "cancelled"
        # The row reads cancelled at once; the handler stops once the signal reaches the worker.
        await asyncio.wait_for(aborted.wait(), 5)
        assert worker.stats["cancelled"] == 2
    assert abort_s < 2.0, "the handler was not told through imagen_job_signals"
    assert reasons == ["cancelled", "cancelled"]
    assert await db.fetchval("select status from imagen.jobs where id = $1", job_id) == "cancelled"
    assert await db.fetchval("select count(*) from imagen.images") == 0


async def test_lost_lease_stops_the_handler_and_nothing_is_written(db: asyncpg.Connection, db_url: str) -> None:
    started = asyncio.Event()
    stopped = asyncio.Event()
    reasons: list[str] = []

    async def long_job(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            reasons.append(ctx.stop_reason)
            stopped.set()
            raise

    async with running_worker(db_url, long_job, WorkerConfig(lease_seconds=1.5, poll_interval=30)):
        job_id = await sql_insert(db)
        await asyncio.wait_for(started.wait(), 10)
        # Another party takes the job over (as a reaper would after an expiry).
        await db.execute(
            "update imagen.jobs set locked_by = 'someone-else', lease_expires_at = now() + interval '1 min' where id = $1",
            job_id,
        )
        await asyncio.wait_for(stopped.wait(), 5)
    assert await db.fetchval("select locked_by from imagen.jobs where id = $1", job_id) == "someone-else"
    assert reasons == ["lease_lost"]


async def test_a_stopped_handler_is_told_whether_it_timed_out_or_the_worker_is_shutting_down(
    db: asyncpg.Connection, db_url: str
) -> None:
    """ctx.stop_reason lets a provider's cancel hook cancel upstream only where the job will not be resumed."""
    reasons: dict[str, str] = {}
    started = asyncio.Event()

    async def long_job(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            reasons[ctx.job.prompt] = ctx.stop_reason
            raise

    async with running_worker(db_url, long_job, WorkerConfig(job_timeout=0.5)):
        timed_out = await sql_insert(db, "slow")
        await wait_for_status(db, [timed_out], ["failed"], timeout=10)
    config = WorkerConfig(shutdown_grace=0.2)
    started.clear()
    async with running_worker(db_url, long_job, config):
        released = await sql_insert(db, "interrupted")
        await asyncio.wait_for(started.wait(), 10)
    assert reasons == {"slow": "timed_out", "interrupted": "shutdown"}
    assert await db.fetchval("select status from imagen.jobs where id = $1", released) == "pending"


async def test_heartbeat_keeps_a_long_job_leased_against_other_workers(db: asyncpg.Connection, db_url: str) -> None:
    runs: list[tuple[uuid.UUID, int, float]] = []

    async def three_leases(ctx: JobContext) -> None:
        await asyncio.sleep(6)

    # A 2 s lease renewed every 0.67 s, for a job of three leases: a heartbeat may run 1.3 s late on a
    # loaded machine before the other worker's reaper could take the job.
    async with (
        running_worker(
            db_url, recording_handler(runs, three_leases), WorkerConfig(lease_seconds=2.0, poll_interval=0.2)
        ),
        running_worker(
            db_url, recording_handler(runs, three_leases), WorkerConfig(lease_seconds=2.0, poll_interval=0.2)
        ),
    ):
        job_id = await sql_insert(db)
        await wait_for_status(db, [job_id], ["done"], timeout=15)
    assert len(runs) == 1, "a leased job was reaped while its worker was alive"
    assert await db.fetchval("select attempts from imagen.jobs where id = $1", job_id) == 1


async def test_expired_lease_is_reclaimed_by_another_worker(db: asyncpg.Connection, db_url: str) -> None:
    # A job left running by a worker that died: its lease ran out a while ago.
    job_id = await sql_insert(db)
    await db.execute(
        """update imagen.jobs set status = 'running', attempts = 1, locked_by = 'dead-worker',
           lease_expires_at = now() - interval '1 second' where id = $1""",
        job_id,
    )
    runs: list[tuple[uuid.UUID, int, float]] = []
    async with running_worker(
        db_url, recording_handler(runs), WorkerConfig(retry_base_seconds=0.01, poll_interval=0.2)
    ):
        await wait_for_status(db, [job_id], ["done"], timeout=10)
    assert [(r[0], r[1]) for r in runs] == [(job_id, 2)]
    events = [
        r[0]
        for r in await db.fetch(
            "select payload->>'status' from imagen.job_events where job_id = $1 order by id", job_id
        )
    ]
    assert events[-3:] == ["pending", "running", "done"]


async def test_expired_lease_with_attempts_spent_fails_the_job(db: asyncpg.Connection, db_url: str) -> None:
    job_id = await sql_insert(db, max_attempts=1)
    await db.execute(
        """update imagen.jobs set status = 'running', attempts = 1, locked_by = 'dead-worker',
           lease_expires_at = now() - interval '1 second' where id = $1""",
        job_id,
    )
    async with running_worker(db_url, recording_handler([]), WorkerConfig(poll_interval=0.2)):
        await wait_for_status(db, [job_id], ["failed"], timeout=10)
    error = await db.fetchval("select error from imagen.jobs where id = $1", job_id)
    assert "dead-worker stopped renewing its lease" in error and "no attempts left" in error


async def test_listener_reconnects_after_its_connection_is_killed(db: asyncpg.Connection, db_url: str) -> None:
    runs: list[tuple[uuid.UUID, int, float]] = []
    async with running_worker(db_url, recording_handler(runs), WorkerConfig(poll_interval=30)):
        [listener] = await wait_for_listeners(db)
        assert await db.fetchval("select pg_terminate_backend($1)", listener)
        await wait_for_listeners(db, besides=[listener])  # a new session LISTENs in its place
        sent = time.monotonic()
        job_id = await sql_insert(db)
        await wait_for_status(db, [job_id], ["done"], timeout=10)
    assert runs[0][2] - sent < 2.0, "the worker did not LISTEN again after losing its connection"


async def test_owner_scope_runs_only_that_owners_jobs(db: asyncpg.Connection, db_url: str) -> None:
    other = uuid.uuid4()
    mine = await sql_insert(db)
    theirs = await sql_insert(db, owner_user_id=other)
    runs: list[tuple[uuid.UUID, int, float]] = []
    async with running_worker(db_url, recording_handler(runs), WorkerConfig(scope="owner", owner_user_id=OWNER)):
        await wait_for_status(db, [mine], ["done"])
        # Behind the other owner's job in claim order: once it has run, theirs was passed over.
        later = await sql_insert(db, "mine, later")
        await wait_for_status(db, [later], ["done"])
    assert [r[0] for r in runs] == [mine, later]
    assert await db.fetchval("select status from imagen.jobs where id = $1", theirs) == "pending"


async def test_pipeline_makes_one_png_and_one_images_row_per_job(
    db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    spec = ImagePromptSpec(prompt="a lighthouse at dusk", size="320x200", seed=42, style_modifiers=["oil painting"])
    ids = [await submit_job(db, spec, owner_user_id=OWNER) for _ in range(3)]
    async with running_worker(db_url, local_pipeline(tmp_path)):
        await wait_for_status(db, ids, ["done"])
    rows = await db.fetch(
        "select i.*, j.image_id from imagen.images i join imagen.jobs j on j.id = i.job_id where j.id = any($1::uuid[])",
        ids,
    )
    assert len(rows) == 3 and all(r["image_id"] == r["id"] for r in rows)
    for r in rows:
        assert (r["width"], r["height"], r["content_type"], r["seed"]) == (320, 200, "image/png", 42)
        assert r["path"] == f"{OWNER}/{r['job_id']}.png"
        png = (tmp_path / "images" / r["path"]).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) == r["bytes"]
        assert (tmp_path / "images" / r["thumb_path"]).read_bytes()[8:12] == b"WEBP"
    # Same prompt and seed: the offline model is deterministic.
    assert len({r["sha256"] for r in rows}) == 1


async def test_invalid_spec_fails_with_a_message_naming_the_field(
    db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    job_id = await sql_insert(db, spec={"size": "huge", "colour": "red"})
    async with running_worker(db_url, local_pipeline(tmp_path)):
        await wait_for_status(db, [job_id], ["failed"])
    row = await db.fetchrow("select error, attempts from imagen.jobs where id = $1", job_id)
    assert "spec.size" in row["error"] and "1024x1024" in row["error"]
    assert "spec.colour: is not a spec field" in row["error"]
    assert row["attempts"] == 1


async def test_prefetched_jobs_wait_for_a_slot_and_never_exceed_concurrency(
    db: asyncpg.Connection, db_url: str
) -> None:
    running = 0
    peak = 0
    finished = 0
    held: list[int] = []  # jobs claimed and not finished, as each handler starts
    gate = asyncio.Event()

    async def handler(ctx: JobContext) -> None:
        nonlocal running, peak, finished
        running += 1
        peak = max(peak, running)
        held.append(ctx.worker.stats["claimed"] - finished)
        await gate.wait()
        running -= 1
        finished += 1

    ids = [await sql_insert(db, f"job {i}") for i in range(30)]
    async with running_worker(db_url, handler, WorkerConfig(concurrency=3, prefetch=6)) as worker:
        # The first three handlers keep their slots: the worker claims six more ahead, and no more.
        await wait_until(
            lambda: db.fetchval("select count(*) = 9 from imagen.jobs where status = 'running'"),
            "concurrency + prefetch jobs claimed",
        )
        assert running == 3, "a prefetched job started without a free slot"
        gate.set()
        await wait_for_status(db, ids, ["done"], timeout=30)
    assert peak == 3, "more handlers ran at once than the concurrency allows"
    assert max(held) <= 9, f"the worker held more than concurrency + prefetch jobs: {max(held)}"
    assert worker.stats["done"] == 30


async def test_cancelling_a_prefetched_job_drops_it_before_it_starts(db: asyncpg.Connection, db_url: str) -> None:
    started: list[uuid.UUID] = []
    gate = asyncio.Event()

    async def handler(ctx: JobContext) -> None:
        started.append(ctx.job.id)
        await gate.wait()

    first = await sql_insert(db, "first")
    async with running_worker(db_url, handler, WorkerConfig(concurrency=1, prefetch=1)) as worker:
        await wait_for_listeners(db)  # the cancel below reaches the worker through imagen_job_signals
        await wait_for_status(db, [first], ["running"])
        second = await sql_insert(db, "second")
        await wait_for_status(db, [second], ["running"])  # claimed into the prefetch buffer
        assert await db.fetchval("select imagen.cancel_job($1)", second) == "cancelled"
        await wait_until(lambda: worker.stats["cancelled"] == 1, "the cancellation reached the worker")
        gate.set()
        await wait_for_status(db, [first], ["done"])
        # The one slot's next job: had the cancelled job stayed in the buffer, it would have run before this.
        third = await sql_insert(db, "third")
        await wait_for_status(db, [third], ["done"])
    assert started == [first, third]
    assert await db.fetchval("select status from imagen.jobs where id = $1", second) == "cancelled"


async def test_shutdown_releases_prefetched_jobs_that_never_started(db: asyncpg.Connection, db_url: str) -> None:
    gate = asyncio.Event()

    async def held(ctx: JobContext) -> None:
        await gate.wait()

    ids = [await sql_insert(db, f"job {i}") for i in range(3)]
    async with running_worker(db_url, held, WorkerConfig(concurrency=1, prefetch=2)) as worker:
        # The first job runs (held at the gate), the other two are claimed into the prefetch buffer.
        await wait_for_status(db, ids, ["running"])
        worker.stop()
        gate.set()
    rows = await db.fetch(
        "select status, attempts from imagen.jobs where id = any($1::uuid[]) order by created_at", ids
    )
    assert [r["status"] for r in rows] == ["done", "pending", "pending"]
    assert [r["attempts"] for r in rows] == [1, 0, 0]


async def test_worker_sessions_plan_for_a_queue(db: asyncpg.Connection, db_url: str) -> None:
    async with running_worker(db_url, recording_handler([])) as worker:
        await wait_for_listeners(db)  # started: its pool is open
        settings = await worker.pool.fetchrow(
            "select current_setting('enable_bitmapscan') as b, current_setting('plan_cache_mode') as p"
        )
    assert (settings["b"], settings["p"]) == ("off", "force_generic_plan")


async def test_a_result_the_database_refuses_fails_that_job_and_the_worker_goes_on(
    db: asyncpg.Connection, db_url: str
) -> None:
    from imagen_worker.queue import ImageRecord

    async def handler(ctx: JobContext) -> JobResult:
        if ctx.job.prompt == "bad":
            # width 0 violates imagen.images' CHECK: the write of this result is refused.
            return JobResult(image=ImageRecord("images", f"x/{ctx.job.id}.png", "image/png", 0, 8, 10, "0" * 64))
        return JobResult()

    bad = await sql_insert(db, "bad")
    async with running_worker(db_url, handler, WorkerConfig(concurrency=1)):
        await wait_for_status(db, [bad], ["failed"], timeout=10)
        good = await sql_insert(db, "good")
        await wait_for_status(db, [good], ["done"], timeout=10)
    error = await db.fetchval("select error from imagen.jobs where id = $1", bad)
    assert error.startswith("the database refused the job's result:") and "images_width_check" in error
    assert await db.fetchval("select count(*) from imagen.images") == 0


async def test_a_claim_carrying_no_result_commits_asynchronously_and_one_carrying_results_does_not(
    db: asyncpg.Connection,
) -> None:
    """ADR 0005: a lost claim only returns its job to pending, so a claim alone may commit without
    waiting for the WAL flush; a statement that writes a job `done` must wait for it."""
    from imagen_worker.queries import q

    first, second = await sql_insert(db, "a"), await sql_insert(db, "b")
    assert await db.fetchval("show synchronous_commit") == "on"
    async with db.transaction():
        claimed = await db.fetch(q("claim_next"), "w1", 1, 30.0, None, 32767)
        assert [r["id"] for r in claimed] == [first]
        assert await db.fetchval("show synchronous_commit") == "off"
    assert await db.fetchval("show synchronous_commit") == "on"  # for that transaction only
    async with db.transaction():
        rows = await db.fetch(q("claim_jobs"), "w1", 1, 30.0, None, [first], [None], [None], [])
        assert {(r["id"], r["claimed"]) for r in rows} == {(first, False), (second, True)}
        assert await db.fetchval("show synchronous_commit") == "on"
    assert await db.fetchval("select status from imagen.jobs where id = $1", first) == "done"
