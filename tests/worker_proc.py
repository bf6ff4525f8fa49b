"""A worker process for the multi-process tests: the real Worker with a test handler.

    python -m tests.worker_proc --db URL [--mode record|pipeline] [--store DIR] [worker options]

Modes:
  record    the handler records each run in test_runs (job_id, worker, attempt) and returns; with
            spec.options.sleep_s it sleeps first (to hold jobs in flight).
  pipeline  the real image pipeline (local provider, local store in --store); a job whose
            spec.options.hang_first_attempt is true hangs on its first attempt (to be killed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from imagen_worker.queue import Handler, JobContext, JobResult, Worker, WorkerConfig

RECORD_TABLE = """
create table if not exists public.test_runs (
  job_id uuid not null, worker text not null, attempt int not null, at timestamptz not null default clock_timestamp()
)
"""


def record_handler(worker_id: str) -> Handler:
    async def handler(ctx: JobContext) -> JobResult | None:
        sleep_s = float(ctx.job.spec.get("options", {}).get("sleep_s", 0))
        if sleep_s:
            await asyncio.sleep(sleep_s)
        await ctx.pool.execute(
            "insert into public.test_runs (job_id, worker, attempt) values ($1, $2, $3)",
            ctx.job.id,
            worker_id,
            ctx.job.attempts,
        )
        return None

    return handler


def pipeline_handler(store: Path) -> Handler:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.helpers import local_pipeline

    pipeline = local_pipeline(store)

    async def handler(ctx: JobContext) -> JobResult:
        if ctx.job.attempts == 1 and ctx.job.spec.get("options", {}).get("hang_first_attempt"):
            print(f"hanging {ctx.job.id}", flush=True)
            await asyncio.sleep(3600)
        return await pipeline(ctx)

    return handler


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--mode", choices=["record", "pipeline"], default="record")
    p.add_argument("--store", type=Path)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--poll-interval", type=float, default=0.5)
    p.add_argument("--lease-seconds", type=float, default=30.0)
    p.add_argument("--shutdown-grace", type=float, default=30.0)
    p.add_argument("--retry-base", type=float, default=0.05)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = WorkerConfig(
        concurrency=args.concurrency,
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
            await conn.execute(RECORD_TABLE)
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
