"""Pipeline benchmark: what one job costs between the provider's bytes and `done`, and local jobs/s.

Prints one JSON line. Two measurements, both through the real Worker, ImagePipeline and local store,
on a database this script creates (and drops at the end):

* overhead: a provider that hands back a pre-made 1024x1024 PNG at once, so the time from the
  provider call to the job's `done` notification is the pipeline's own: sniffing, sha256 and the
  WebP thumbnail, the two puts on the local store, and the `done` + images row commit through the
  worker's completion path. Jobs run one at a time; the first few warm up and are not counted.
* throughput: the whole local pipeline with the offline `local` provider drawing 512x512 images,
  many jobs queued at once, jobs/s from the INSERT to the last `done`.

    .venv/bin/python bench/pipeline.py [--jobs 200] [--throughput-jobs 200] [--concurrency 8]

PG_ADMIN_DSN overrides the admin connection (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its queue.py would shadow the standard
# library's `queue` (which asyncio.to_thread needs).
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

import asyncpg
import PIL
from PIL import Image

from imagen_worker import pipeline as pipeline_module
from imagen_worker.db import init_connection
from imagen_worker.images import ProcessedImage, process_image
from imagen_worker.migrate import migrate
from imagen_worker.pipeline import ImagePipeline
from imagen_worker.providers import (
    Capabilities,
    GeneratedImage,
    GenerationRequest,
    Provider,
    ProviderRegistry,
    ProviderResult,
)
from imagen_worker.providers.local import LocalProvider, draw
from imagen_worker.queue import Worker, WorkerConfig
from imagen_worker.storage import LocalStorage, StoredObject

if TYPE_CHECKING:
    from imagen_worker.queue import JobContext

ADMIN_DSN = os.environ.get("PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGET_P50_MS = 60.0
WARMUP = 10


def provider_png(side: int) -> bytes:
    """A 1024x1024-class PNG like a provider's: a drawn scene with photographic grain, zlib level 6."""
    with Image.open(io.BytesIO(draw("a lighthouse at dusk over a stormy sea, oil painting", 7, side, side))) as scene:
        grain = Image.effect_noise((side, side), 24).convert("RGB")
        img = Image.blend(scene.convert("RGB"), grain, 0.25)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


class Timeline:
    """Per-job marks: provider called, image processed, both puts done, `done` announced."""

    def __init__(self) -> None:
        self.marks: dict[uuid.UUID, dict[str, float]] = {}

    def mark(self, job_id: uuid.UUID, name: str) -> None:
        self.marks.setdefault(job_id, {})[name] = time.perf_counter()


class InstantProvider(Provider):
    """Returns pre-made bytes at once, so only the pipeline around it is measured."""

    name = "instant"
    models: ClassVar[dict[str, Capabilities]] = {
        "instant-v1": Capabilities(default_size="1024x1024", price_usd=Decimal("0"))
    }

    def __init__(self, data: bytes, timeline: Timeline) -> None:
        self.data = data
        self.timeline = timeline

    async def generate(self, request: GenerationRequest, ctx: JobContext) -> ProviderResult:
        self.timeline.mark(ctx.job.id, "provider")
        return ProviderResult(GeneratedImage(self.data, seed=0), cost_usd=Decimal("0"))


class TimedLocalStorage(LocalStorage):
    def __init__(self, root: Path, timeline: Timeline) -> None:
        super().__init__(root, signing_key=b"bench-signing-key-0123456789")
        self.timeline = timeline

    async def put(self, path: str, data: bytes, content_type: str) -> StoredObject:
        stored = await super().put(path, data, content_type)
        self.timeline.mark(uuid.UUID(path.split("/")[1].split(".")[0]), "stored")
        return stored


def timed_process_image(timeline: Timeline) -> Callable[[bytes], ProcessedImage]:
    def run(data: bytes) -> ProcessedImage:
        start = time.perf_counter()
        image = process_image(data)
        timeline.marks.setdefault(_current_job[0], {})["process_ms"] = (time.perf_counter() - start) * 1000
        return image

    return run


# process_image runs in a worker thread without the job; overhead jobs run one at a time, so the
# current one is known.
_current_job: list[uuid.UUID] = [uuid.UUID(int=0)]


def pcts(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "p50": round(cuts[49], 2),
        "p95": round(cuts[94], 2),
        "p99": round(cuts[98], 2),
        "mean": round(statistics.fmean(values), 2),
        "max": round(max(values), 2),
    }


def url_for(admin_dsn: str, database: str) -> str:
    base, _, rest = admin_dsn.rpartition("/")
    query = "?" + rest.split("?", 1)[1] if "?" in rest else ""
    return f"{base}/{database}{query}"


class DoneWatcher:
    """LISTENs on imagen_job_events and timestamps each job's `done` as it is announced (after commit)."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.done = 0
        self.changed = asyncio.Event()

        self.failed: list[str] = []

    def __call__(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        decoded = json.loads(str(payload))
        # One event per notification, or a batch of them in one.
        for event in decoded if isinstance(decoded, list) else [decoded]:
            if event.get("status") == "done":
                self.timeline.mark(uuid.UUID(event["job_id"]), "done")
                self.done += 1
            elif event.get("status") == "failed":
                self.failed.append(event["job_id"])
        self.changed.set()

    async def wait_for(self, conn: asyncpg.Connection, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.done < count:
            if self.failed:
                error = await conn.fetchval("select error from imagen.jobs where id = $1", uuid.UUID(self.failed[0]))
                raise RuntimeError(f"bench job {self.failed[0]} failed: {error}")
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))


async def insert_jobs(conn: asyncpg.Connection, count: int, provider: str, model: str, spec: dict[str, Any]) -> None:
    await conn.execute(
        """insert into imagen.jobs (owner_user_id, provider, model, prompt, spec)
           select $1, $2, $3, 'bench job ' || g, $4 from generate_series(1, $5) g""",
        uuid.uuid4(),
        provider,
        model,
        spec,
        count,
    )


async def measure_overhead(dsn: str, store: Path, jobs: int) -> dict[str, Any]:
    timeline = Timeline()
    data = provider_png(1024)
    provider = InstantProvider(data, timeline)
    pipe = ImagePipeline(TimedLocalStorage(store, timeline), ProviderRegistry({"instant": lambda: provider}))
    # The pipeline calls process_image by its module-level name; time it there.
    original = vars(pipeline_module)["process_image"]
    setattr(pipeline_module, "process_image", timed_process_image(timeline))  # noqa: B010
    watcher = DoneWatcher(timeline)
    listener = await asyncpg.connect(dsn)
    await listener.add_listener("imagen_job_events", watcher)
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    worker = Worker(dsn, pipe, WorkerConfig(concurrency=1, poll_interval=1.0))
    task = asyncio.create_task(worker.run())
    try:
        for i in range(jobs + WARMUP):
            job_id = await conn.fetchval(
                "insert into imagen.jobs (owner_user_id, provider, model, prompt) "
                "values ($1, 'instant', 'instant-v1', 'bench') returning id",
                uuid.uuid4(),
            )
            _current_job[0] = job_id
            await watcher.wait_for(conn, i + 1, timeout=30)
    finally:
        worker.stop()
        await task
        setattr(pipeline_module, "process_image", original)  # noqa: B010
        await listener.close()
        await conn.close()
    runs = list(timeline.marks.values())[WARMUP:]
    total = [(m["done"] - m["provider"]) * 1000 for m in runs]
    process = [m["process_ms"] for m in runs]
    puts_and_process = [(m["stored"] - m["provider"]) * 1000 for m in runs]
    complete = [(m["done"] - m["stored"]) * 1000 for m in runs]
    return {
        "image": {"format": "png", "size": "1024x1024", "bytes": len(data)},
        "jobs": len(runs),
        "overhead_ms": pcts(total),
        "p50_breakdown_ms": {
            "process_image": round(statistics.median(process), 2),
            "storage_puts": round(statistics.median(p - q for p, q in zip(puts_and_process, process, strict=True)), 2),
            "complete_to_done": round(statistics.median(complete), 2),
        },
        "target_p50_ms": TARGET_P50_MS,
        "meets_target": statistics.median(total) <= TARGET_P50_MS,
    }


async def measure_throughput(dsn: str, store: Path, jobs: int, concurrency: int) -> dict[str, Any]:
    timeline = Timeline()
    pipe = ImagePipeline(
        LocalStorage(store, signing_key=b"bench-signing-key-0123456789"), ProviderRegistry({"local": LocalProvider})
    )
    watcher = DoneWatcher(timeline)
    listener = await asyncpg.connect(dsn)
    await listener.add_listener("imagen_job_events", watcher)
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    worker = Worker(dsn, pipe, WorkerConfig(concurrency=concurrency, poll_interval=1.0))
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.5)  # let the worker connect and LISTEN before the clock starts
        start = time.perf_counter()
        await insert_jobs(conn, jobs, "local", "local-v1", {"size": "512x512"})
        await watcher.wait_for(conn, jobs, timeout=max(60.0, jobs))
        seconds = time.perf_counter() - start
    finally:
        worker.stop()
        await task
        await listener.close()
        await conn.close()
    return {
        "provider": "local",
        "size": "512x512",
        "jobs": jobs,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(jobs / seconds, 1),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    name = f"imagen_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'create database "{name}"')
    finally:
        await admin.close()
    dsn = url_for(ADMIN_DSN, name)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        with tempfile.TemporaryDirectory(prefix="imagen-bench-") as tmp:
            overhead = await measure_overhead(dsn, Path(tmp) / "overhead", args.jobs)
            throughput = await measure_throughput(dsn, Path(tmp) / "throughput", args.throughput_jobs, args.concurrency)
    finally:
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'drop database if exists "{name}" with (force)')
        finally:
            await admin.close()
    return {
        "bench": "pipeline",
        **overhead,
        "throughput": throughput,
        "env": {
            "python": platform.python_version(),
            "pillow": PIL.__version__,
            "cpus": os.cpu_count(),
            "postgres": ADMIN_DSN.rpartition("@")[2].split("/")[0],
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=200, help=f"overhead jobs counted (after {WARMUP} warm-up)")
    parser.add_argument("--throughput-jobs", type=int, default=200, help="512x512 local-provider jobs")
    parser.add_argument("--concurrency", type=int, default=8, help="worker concurrency for the throughput run")
    result = asyncio.run(main(parser.parse_args()))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
