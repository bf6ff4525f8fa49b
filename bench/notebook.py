"""Notebook API benchmark: `generate()` overhead and `sweep()` against submit + worker. Prints one JSON object.

    .venv/bin/python bench/notebook.py [--generates 50] [--sweep 100]

- generate: wall time of `imagen_canvas.generate(prompt)` (submit, the worker's claim, the provider,
  the pipeline, the `done` event, the final read) minus the provider's own time for that job,
  measured inside the provider; p50/p95 over `--generates` calls after 5 warm-ups, with the
  runtime's own worker (concurrency 4) and the `local` provider at 512×512. Target p50 ≤ 100 ms.
- sweep: wall time of `sweep(["bench"], seeds=N)` as a user runs it (one batch insert, its tqdm
  progress bar on, here a text bar on stderr; waiting on the event stream), against the same N jobs
  submitted with the real CLI, one `imagen submit --batch` process each as a shell loop would, timed
  to the last `done` in the database. Both are run by one real `imagen worker` process
  (`--concurrency 4`, the kernel worker's), started before either and live throughout, so the
  runtime starts no worker of its own. Ratio sweep / CLI; target ≤ 1.1. Beside it, the stricter
  `queue_only`: the same N jobs queued in-process with `Service.create_job` (what `imagen submit`
  does, without a process per job), and the sweep's ratio to that.

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
import signal
import statistics
import subprocess
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


IMAGEN = [sys.executable, "-m", "imagen_worker"]
CONCURRENCY = 4  # the worker a kernel starts for itself runs 4 jobs at once


def start_worker() -> subprocess.Popen[bytes]:
    """A real `imagen worker` process on the bench's database (IMAGEN_DATABASE_URL in the environment)."""
    return subprocess.Popen(
        [*IMAGEN, "worker", "--concurrency", str(CONCURRENCY), "--poll-interval", "0.2", "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
    )


async def wait_for_worker(dsn: str, pid: int, timeout: float = 30.0) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while not await conn.fetchval("select count(*) from imagen.workers where pid = $1", pid):
            if time.monotonic() > deadline:
                raise SystemExit("the `imagen worker` process never registered")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def wait_done(dsn: str, owner: uuid.UUID, n: int) -> None:
    """Until the owner's n jobs are all done (polled every 5 ms)."""
    conn = await asyncpg.connect(dsn)
    try:
        while await conn.fetchval(
            "select $2::int - count(*) filter (where status = 'done') from imagen.jobs where owner_user_id = $1",
            owner,
            n,
        ):
            await asyncio.sleep(0.005)
    finally:
        await conn.close()


def cli_baseline(dsn: str, n: int) -> float:
    """N jobs submitted by `imagen submit --batch`, one process each, run by the live `imagen worker`;
    seconds from the first submit to the last done."""
    owner = uuid.uuid4()
    started = time.perf_counter()
    for i in range(n):
        subprocess.run(
            [*IMAGEN, "submit", "bench", "--seed", str(i), "--batch", "--owner", str(owner)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    asyncio.run(wait_done(dsn, owner, n))
    return time.perf_counter() - started


async def queue_only_baseline(dsn: str, n: int) -> float:
    """N jobs queued in-process as `imagen submit` queues them (one `Service.create_job` each), run by the
    live `imagen worker`; seconds to the last done."""
    from imagen_worker.config import Settings
    from imagen_worker.db import create_pool
    from imagen_worker.scheduling import BATCH
    from imagen_worker.service import Service, ServiceConfig
    from imagen_worker.storage import storage_from_settings

    owner = uuid.uuid4()
    pool = await create_pool(dsn, min_size=1, max_size=2)
    service = Service(pool, storage_from_settings(Settings.from_env()), config=ServiceConfig(sign_urls=False))
    try:
        started = time.perf_counter()
        for i in range(n):
            await service.create_job(owner, {"prompt": "bench", "seed": i}, default_priority=BATCH)
        await wait_done(dsn, owner, n)
        return time.perf_counter() - started
    finally:
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
        rt.close()  # its worker goes: the sweep and the baselines share one real `imagen worker`
        worker = start_worker()
        try:
            asyncio.run(wait_for_worker(dsn, worker.pid))
            rt = imagen_canvas.configure(database_url=dsn, owner_user_id=uuid.uuid4())
            started = time.perf_counter()
            gallery = imagen_canvas.sweep(["bench"], seeds=args.sweep)  # the progress bar on, as users get it
            sweep_s = time.perf_counter() - started
            assert all(g.status == "done" for g in gallery)
            assert rt.worker is None, "the runtime started a worker of its own beside `imagen worker`"
            rt.close()
            cli_s = cli_baseline(dsn, args.sweep)
            queue_s = asyncio.run(queue_only_baseline(dsn, args.sweep))
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        out = {
            "generate_overhead_ms": quantiles(overheads),
            "generate_wall_ms": quantiles(walls),
            "generate_provider_ms": quantiles(provider),
            "sweep": {
                "jobs": args.sweep,
                "sweep_s": round(sweep_s, 3),
                "submit_and_worker_s": round(cli_s, 3),
                "ratio": round(sweep_s / cli_s, 3),
                "queue_only_s": round(queue_s, 3),
                "ratio_to_queue_only": round(sweep_s / queue_s, 3),
                "worker_concurrency": CONCURRENCY,
            },
        }
        out["meets_targets"] = {
            "generate_overhead_p50_ms": out["generate_overhead_ms"]["p50"] <= 100,
            "sweep_ratio": out["sweep"]["ratio"] <= 1.1,
            "sweep_ratio_to_queue_only": out["sweep"]["ratio_to_queue_only"] <= 1.1,
        }
        print(json.dumps(out))
    finally:
        asyncio.run(drop_db(name))


if __name__ == "__main__":
    main()
