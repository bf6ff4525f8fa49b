"""A worker process for the multi-process tests: the real Worker with a test handler.

    python -m tests.worker_proc --db URL [--mode record|pipeline] [--store DIR] [worker options]

Modes:
  record    the handler records each run in test_runs (job_id, worker, attempt) and returns; with
            spec.options.sleep_s it sleeps first, with spec.options.hold it waits until the test opens
            the gate (a row in test_gate): both hold jobs in flight.
  pipeline  the real image pipeline (local provider, local store in --store). On its first attempt a
            job whose spec.options.hang_first_attempt is true hangs before the pipeline runs, and one
            whose spec.options.die_in_upload is "image" or "thumbnail" hangs inside the storage put of
            that object, after the provider answered, with the object's bytes written but not yet in
            place: both to be killed there. Each prints a line (`hanging <job id>`, `uploading <job id>
            <key>`) when it is there.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from imagen_worker.queue import Handler, JobContext, JobResult, Worker, WorkerConfig

RECORD_TABLES = """
create table if not exists public.test_runs (
  job_id uuid not null, worker text not null, attempt int not null, at timestamptz not null default clock_timestamp()
);
create table if not exists public.test_gate (opened_at timestamptz not null default clock_timestamp())
"""


def record_handler(worker_id: str) -> Handler:
    async def handler(ctx: JobContext) -> JobResult | None:
        options = ctx.job.spec.get("options", {})
        sleep_s = float(options.get("sleep_s", 0))
        if sleep_s:
            await asyncio.sleep(sleep_s)
        if options.get("hold"):
            while not await ctx.pool.fetchval("select exists (select from public.test_gate)"):
                await asyncio.sleep(0.1)
        await ctx.pool.execute(
            "insert into public.test_runs (job_id, worker, attempt) values ($1, $2, $3)",
            ctx.job.id,
            worker_id,
            ctx.job.attempts,
        )
        return None

    return handler


class UploadStall:
    """Stops the thread that puts a chosen object into the local store at the moment it moves the
    written bytes into place (the `os.rename` audit event of os.replace), until the process is killed."""

    def __init__(self) -> None:
        self._targets: dict[str, tuple[uuid.UUID, str]] = {}
        self._lock = threading.Lock()
        sys.addaudithook(self._hook)

    def add(self, target: Path, job_id: uuid.UUID, key: str) -> None:
        with self._lock:
            self._targets[os.fspath(target)] = (job_id, key)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "os.rename" or not self._targets:
            return
        with self._lock:
            found = self._targets.pop(os.fsdecode(os.fspath(args[1])), None)
        if found is not None:
            print(f"uploading {found[0]} {found[1]}", flush=True)
            time.sleep(3600)


def pipeline_handler(store: Path) -> Handler:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from imagen_worker.pipeline import object_keys
    from tests.helpers import local_pipeline

    pipeline = local_pipeline(store)
    stall = UploadStall()

    async def handler(ctx: JobContext) -> JobResult:
        options = ctx.job.spec.get("options", {})
        if ctx.job.attempts == 1 and options.get("hang_first_attempt"):
            print(f"hanging {ctx.job.id}", flush=True)
            await asyncio.sleep(3600)
        if ctx.job.attempts == 1 and options.get("die_in_upload"):
            image_key, thumb_key = object_keys(ctx.job.owner_user_id, ctx.job.id, "png")  # the local model's PNG
            key = {"image": image_key, "thumbnail": thumb_key}[options["die_in_upload"]]
            stall.add(pipeline.storage.file_path(key), ctx.job.id, key)
        return await pipeline(ctx)

    return handler


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--mode", choices=["record", "pipeline"], default="record")
    p.add_argument("--store", type=Path)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--prefetch", type=int, default=0)
    p.add_argument("--poll-interval", type=float, default=0.5)
    p.add_argument("--lease-seconds", type=float, default=30.0)
    p.add_argument("--shutdown-grace", type=float, default=30.0)
    p.add_argument("--retry-base", type=float, default=0.05)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = WorkerConfig(
        concurrency=args.concurrency,
        prefetch=args.prefetch,
        poll_interval=args.poll_interval,
        lease_seconds=args.lease_seconds,
        shutdown_grace=args.shutdown_grace,
        retry_base_seconds=args.retry_base,
    )
    if args.mode == "record":
        import asyncpg

        conn = await asyncpg.connect(args.db)
        # Several worker processes start at once, and CREATE TABLE IF NOT EXISTS races with itself.
        async with conn.transaction():
            await conn.execute("select pg_advisory_xact_lock(4242)")
            await conn.execute(RECORD_TABLES)
        await conn.close()
        handler = record_handler(config.worker_id)
    else:
        handler = pipeline_handler(args.store)
    worker = Worker(args.db, handler, config)
    worker.install_signal_handlers()
    print(f"worker {config.worker_id} ready", flush=True)
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
