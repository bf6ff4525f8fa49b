"""Notebook API benchmark: `generate()` overhead and `sweep()` against submit + worker. Prints one JSON object.

    .venv/bin/python bench/notebook.py [--generates 50] [--sweep 100]

- generate: wall time of `imagen_canvas.generate(prompt)` (submit, the worker's claim, the provider,
  the pipeline, the `done` event, the final read) minus the provider's own time for that job,
  measured inside the provider; p50/p95 over `--generates` calls after 5 warm-ups, with the
  runtime's own worker (concurrency 4) and the `local` provider at 512×512. Target p50 ≤ 100 ms.
- sweep: wall time of `sweep(["bench"], seeds=N)` (one batch insert, a progress bar, waiting on the
  event stream) against the same N jobs queued the way `imagen submit` queues them (one
  `Service.create_job` each) and run by a Worker of the same concurrency, timed to the last `done`
  in the database. Ratio sweep / baseline; target ≤ 1.1.

A database is created on PG_ADMIN_DSN (default postgresql://postgres@127.0.0.1:5432/postgres) and
dropped at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # bench/queue.py would shadow the standard library's queue module

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

import asyncpg

ADMIN = os.environ.get("PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
PROVIDER_SECONDS: dict[str, float] = {}


def timed_local() -> Any:
    """The `local` provider, recording how long each of its calls takes (the provider's own time)."""
    from imagen_worker.providers.local import LocalProvider

    class Timed(LocalProvider):
        async def generate(self, request: Any, ctx: Any) -> Any:
            started = time.perf_counter()
            try:
                return await super().generate(request, ctx)
            finally:
                PROVIDER_SECONDS[str(ctx.job.id)] = time.perf_counter() - started

    return Timed()


def quantiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "p50": round(q[49], 2),
        "p95": round(q[94], 2),
        "mean": round(statistics.fmean(values), 2),
        "n": len(values),
    }


async def create_db() -> tuple[str, str]:
    name = f"imagen_nb_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'create database "{name}"')
    await admin.close()
    base, _, rest = ADMIN.rpartition("/")
    return name, f"{base}/{name}" + ("?" + rest.split("?", 1)[1] if "?" in rest else "")


async def drop_db(name: str) -> None:
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'drop database if exists "{name}" with (force)')
    await admin.close()


async def baseline(dsn: str, n: int, concurrency: int, data_dir: Path) -> float:
    """N jobs queued as `imagen submit` queues them, run by a Worker; seconds to the last done."""
    from imagen_worker.config import Settings
    from imagen_worker.db import create_pool
    from imagen_worker.pipeline import ImagePipeline
    from imagen_worker.queue import Worker, WorkerConfig
    from imagen_worker.scheduling import BATCH
    from imagen_worker.service import Service, ServiceConfig
    from imagen_worker.storage import storage_from_settings

    settings = Settings.from_env()
    owner = uuid.uuid4()
    pool = await create_pool(dsn, min_size=1, max_size=2)
    service = Service(pool, storage_from_settings(settings), config=ServiceConfig(sign_urls=False))
    worker = Worker(
        dsn,
        ImagePipeline(storage_from_settings(settings)),
        WorkerConfig(concurrency=concurrency, scope="owner", owner_user_id=owner, poll_interval=settings.poll_interval),
    )
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.5)  # the worker is up, as a running `imagen worker` would be
        started = time.perf_counter()
        for i in range(n):
            await service.create_job(owner, {"prompt": "bench", "seed": i}, default_priority=BATCH)
        while await pool.fetchval(
            "select count(*) from imagen.jobs where owner_user_id = $1 and status <> 'done'", owner
        ):
            await asyncio.sleep(0.005)
        return time.perf_counter() - started
    finally:
        worker.stop()
        await task
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generates", type=int, default=50)
    parser.add_argument("--sweep", type=int, default=100)
    args = parser.parse_args()
    name, dsn = asyncio.run(create_db())
    data = Path(tempfile.mkdtemp(prefix="imagen-nb-bench-"))
    os.environ.update({"IMAGEN_DATA_DIR": str(data), "IMAGEN_DATABASE_URL": dsn})
    try:
        from imagen_worker.providers import register

        register("local", timed_local)
        import imagen_canvas

        rt = imagen_canvas.configure(database_url=dsn, owner_user_id=uuid.uuid4())
        for i in range(5):
            imagen_canvas.generate("warm-up", seed=i)
        overheads, walls, provider = [], [], []
        for i in range(args.generates):
            started = time.perf_counter()
            gen = imagen_canvas.generate("a red fox", seed=1000 + i)
            wall = time.perf_counter() - started
            walls.append(wall * 1000)
            provider.append(PROVIDER_SECONDS[gen.id] * 1000)
            overheads.append(wall * 1000 - provider[-1])
        started = time.perf_counter()
        gallery = imagen_canvas.sweep(["bench"], seeds=args.sweep, progress=False)
        sweep_s = time.perf_counter() - started
        assert all(g.status == "done" for g in gallery)
        concurrency = rt.worker.config.concurrency if rt.worker is not None else 4
        rt.close()
        base_s = asyncio.run(baseline(dsn, args.sweep, concurrency, data))
        out = {
            "generate_overhead_ms": quantiles(overheads),
            "generate_wall_ms": quantiles(walls),
            "generate_provider_ms": quantiles(provider),
            "sweep": {
                "jobs": args.sweep,
                "sweep_s": round(sweep_s, 3),
                "submit_and_worker_s": round(base_s, 3),
                "ratio": round(sweep_s / base_s, 3),
                "worker_concurrency": concurrency,
            },
        }
        out["meets_targets"] = {
            "generate_overhead_p50_ms": out["generate_overhead_ms"]["p50"] <= 100,
            "sweep_ratio": out["sweep"]["ratio"] <= 1.1,
        }
        print(json.dumps(out))
    finally:
        asyncio.run(drop_db(name))


if __name__ == "__main__":
    main()
