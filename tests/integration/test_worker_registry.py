"""Live workers register in imagen.workers, beat, deregister on exit and age out after a crash."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from imagen_worker.queue import WorkerConfig

from ..conftest import IMAGEN
from ..helpers import local_pipeline, running_worker


async def _live(db: asyncpg.Connection, stale: float = 30.0) -> list[asyncpg.Record]:
    return await db.fetch("select * from imagen.workers where last_seen_at >= now() - make_interval(secs => $1)", stale)


@pytest.mark.asyncio
async def test_a_worker_registers_with_its_providers_beats_and_deregisters_on_stop(
    db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    config = WorkerConfig(concurrency=3, poll_interval=0.2, stale_seconds=1.5)
    async with running_worker(db_url, local_pipeline(tmp_path), config) as worker:
        deadline = time.monotonic() + 5
        while not (rows := await _live(db)):
            assert time.monotonic() < deadline, "the worker never registered"
            await asyncio.sleep(0.02)
        (row,) = rows
        assert row["id"] == worker.config.worker_id
        assert row["scope"] == "all" and row["owner_user_id"] is None and row["concurrency"] == 3
        assert row["providers"] == ["local"]
        first = row["last_seen_at"]
        deadline = time.monotonic() + 5
        while (await db.fetchval("select last_seen_at from imagen.workers")) == first:
            assert time.monotonic() < deadline, "the worker never beat"
            await asyncio.sleep(0.05)
    assert await db.fetchval("select count(*) from imagen.workers") == 0


@pytest.mark.asyncio
async def test_an_owner_scoped_worker_registers_its_owner(db: asyncpg.Connection, db_url: str, tmp_path: Path) -> None:
    owner = uuid.uuid4()
    config = WorkerConfig(poll_interval=0.2, scope="owner", owner_user_id=owner)
    async with running_worker(db_url, local_pipeline(tmp_path), config):
        deadline = time.monotonic() + 5
        while not (rows := await _live(db)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert rows[0]["scope"] == "owner" and rows[0]["owner_user_id"] == owner


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_killed_worker_ages_out_of_the_live_list_and_imagen_workers_shows_the_live_ones(
    db: asyncpg.Connection, cli_env: dict[str, str]
) -> None:
    env = {**cli_env, "IMAGEN_WORKER_STALE_SECONDS": "1.5"}
    proc = subprocess.Popen(
        [*IMAGEN, "worker", "--poll-interval", "0.2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while not await _live(db, 1.5):
            assert time.monotonic() < deadline, "the worker process never registered"
            await asyncio.sleep(0.05)
        out = subprocess.run([*IMAGEN, "workers", "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        listed = [json.loads(line) for line in out.stdout.splitlines()]
        assert [w["pid"] for w in listed] == [proc.pid]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # still registered (no deregistration after SIGKILL), but no longer live once it stops beating
        assert await db.fetchval("select count(*) from imagen.workers") == 1
        deadline = time.monotonic() + 10
        while await _live(db, 1.5):
            assert time.monotonic() < deadline, "the killed worker never aged out"
            await asyncio.sleep(0.1)
        out = subprocess.run([*IMAGEN, "workers"], env=env, capture_output=True, text=True, timeout=60)
        assert "no live worker" in out.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
