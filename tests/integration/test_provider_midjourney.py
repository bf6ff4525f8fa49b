"""Midjourney through the midjourney-proxy protocol, with the real httpx client against a local fake
proxy: jobs from INSERT to done with progress events, notifyHook callbacks that wake the worker early,
refusals and failures classified, and a retried attempt resuming its task."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from PIL import Image

from imagen_worker.db import create_pool
from imagen_worker.jobs import submit_job
from imagen_worker.providers.midjourney import MidjourneyProvider
from imagen_worker.queue import WorkerConfig
from imagen_worker.spec import parse_spec
from imagen_worker.webhook_server import WebhookServer
from imagen_worker.webhooks import WebhookReceiver

from ..fakes.midjourney_server import FAIL_REASON, FakeMidjourneyProxy
from ..helpers import local_pipeline, running_worker, wait_for_status

pytestmark = pytest.mark.asyncio

OWNER = uuid.UUID("5f1d0a52-8f4b-4b8e-9a53-3a8f8a0c0003")
SECRET = "imagen-webhook-secret-for-tests-0123456789"
CONFIG = WorkerConfig(concurrency=2, poll_interval=0.5, retry_base_seconds=0.05, retry_cap_seconds=0.2)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeMidjourneyProxy]:
    async with FakeMidjourneyProxy() as server:
        yield server


@pytest_asyncio.fixture
async def webhooks(db_url: str) -> AsyncIterator[WebhookServer]:
    pool = await create_pool(db_url, migrate=False, min_size=1, max_size=2)
    try:
        async with WebhookServer(WebhookReceiver(pool, {"midjourney": SECRET})) as server:
            yield server
    finally:
        await pool.close()


def provider_for(
    fake: FakeMidjourneyProxy, *, webhook_url: str = "", poll_interval: float = 0.05
) -> MidjourneyProvider:
    return MidjourneyProvider(
        api_key=fake.api_secret,
        base_url=fake.base_url,
        webhook_url=webhook_url,
        webhook_secret=SECRET,
        poll_interval=poll_interval,
        poll_timeout=20,
    )


async def run(
    db_url: str, db: asyncpg.Connection, store: Path, provider: MidjourneyProvider, spec: dict[str, Any]
) -> uuid.UUID:
    pipeline = local_pipeline(store, {"midjourney": lambda: provider})
    async with running_worker(db_url, pipeline, CONFIG):
        job_id = await submit_job(
            db, parse_spec(spec), owner_user_id=OWNER, provider="midjourney", model="midjourney-v7"
        )
        await wait_for_status(db, [job_id], timeout=15)
    return job_id


async def stored_image(
    db: asyncpg.Connection, store: Path, job_id: uuid.UUID, aspect: tuple[int, int] = (1, 1)
) -> asyncpg.Record:
    """The job's images row, after checking the stored PNG has the row's size and the `aspect` (w, h) asked for."""
    job = await db.fetchrow("select status, error, image_id from imagen.jobs where id = $1", job_id)
    assert job["status"] == "done", job["error"]
    image = await db.fetchrow("select * from imagen.images where id = $1", job["image_id"])
    with Image.open(io.BytesIO((store / image["bucket"] / image["path"]).read_bytes())) as img:
        assert img.format == "PNG" and img.size == (image["width"], image["height"])
        assert img.width * aspect[1] == img.height * aspect[0], f"{img.size} is not {aspect[0]}:{aspect[1]}"
    with Image.open(store / image["bucket"] / image["thumb_path"]) as thumb:
        assert thumb.format == "WEBP"
    return image


async def progress_of(db: asyncpg.Connection, job_id: uuid.UUID) -> list[float]:
    rows = await db.fetch(
        "select payload from imagen.job_events where job_id = $1 and kind = 'progress' order by id", job_id
    )
    return [r["payload"]["progress"] for r in rows]


async def test_polled_task_records_its_progress_percentages_and_ends_done(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeMidjourneyProxy
) -> None:
    spec = {
        "prompt": "a lighthouse  at dusk",
        "negative_prompt": "fog",
        "aspect_ratio": "16:9",
        "seed": 7,
        "options": {"stylize": 250, "raw": True},
    }
    job_id = await run(db_url, db, tmp_path, provider_for(fake), spec)

    image = await stored_image(db, tmp_path, job_id, aspect=(16, 9))
    assert image["seed"] == 7 and image["provider"] == "midjourney"
    assert await progress_of(db, job_id) == [0.0, 0.15, 0.45, 0.8, 1.0]  # each change once, in order
    [submitted] = fake.submissions
    assert submitted["prompt"] == "a lighthouse at dusk --ar 16:9 --no fog --seed 7 --raw --stylize 250 --v 7"
    assert submitted["state"] == str(job_id) and "notifyHook" not in submitted
    [task_id] = fake.tasks
    assert await db.fetchval("select provider_job_id from imagen.jobs where id = $1", job_id) == task_id
    assert fake.fetch_count(task_id) >= 5


async def test_notify_hook_callbacks_wake_the_worker_and_are_logged_as_webhook_events(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeMidjourneyProxy, webhooks: WebhookServer
) -> None:
    url = f"{webhooks.base_url}/midjourney"
    # A 10 s poll interval: only the callbacks can make this job end in time.
    provider = provider_for(fake, webhook_url=url, poll_interval=10)
    started = time.monotonic()
    job_id = await run(db_url, db, tmp_path, provider, {"prompt": "a red fox"})
    assert time.monotonic() - started < 8

    await stored_image(db, tmp_path, job_id)
    [submitted] = fake.submissions
    hook = httpx.URL(submitted["notifyHook"])
    assert str(hook).startswith(url) and hook.params["job_id"] == str(job_id) and len(hook.params["token"]) == 64
    accepted = [n for n in fake.notifications if n.status == 200]
    assert [n.progress for n in accepted][-3:] == ["45%", "80%", "100%"]
    logged = await db.fetch(
        "select payload, delivery_id from imagen.job_events where job_id = $1 and kind = 'webhook' order by id", job_id
    )
    assert len(logged) == len(accepted)
    [task_id] = fake.tasks
    assert logged[-1]["delivery_id"] == f"midjourney:{task_id}:SUCCESS:100%"
    assert logged[-1]["payload"]["output"] == [fake.tasks[task_id]["imageUrl"]]
    progress = await progress_of(db, job_id)
    assert progress[-1] == 1.0 and 0.8 in progress and progress == sorted(progress)


async def test_a_failed_task_fails_the_job_with_the_proxys_fail_reason(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeMidjourneyProxy
) -> None:
    fake.plan = lambda _i: "failure"
    job_id = await run(db_url, db, tmp_path, provider_for(fake), {"prompt": "a red fox"})

    job = await db.fetchrow("select status, attempts, error from imagen.jobs where id = $1", job_id)
    assert job["status"] == "failed" and job["attempts"] == 1
    assert FAIL_REASON in job["error"]


async def test_a_banned_prompt_is_refused_at_once_and_a_full_queue_is_retried(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeMidjourneyProxy
) -> None:
    fake.plan = lambda i: "queue_full" if i == 0 else None
    pipeline = local_pipeline(tmp_path, {"midjourney": lambda: provider_for(fake)})
    async with running_worker(db_url, pipeline, CONFIG):
        banned = await submit_job(
            db, parse_spec({"prompt": "a bannedword cat"}), owner_user_id=OWNER, provider="midjourney", model="niji-6"
        )
        await wait_for_status(db, [banned], timeout=15)
        queued = await submit_job(
            db, parse_spec({"prompt": "a calm sea"}), owner_user_id=OWNER, provider="midjourney", model="niji-6"
        )
        await wait_for_status(db, [queued], timeout=15)

    job = await db.fetchrow("select status, attempts, error from imagen.jobs where id = $1", banned)
    assert job["status"] == "failed" and job["attempts"] == 1
    assert "banned word (bannedword)" in job["error"]
    await stored_image(db, tmp_path, queued)
    assert await db.fetchval("select attempts from imagen.jobs where id = $1", queued) == 2
    assert fake.submissions[-1]["prompt"].endswith("--niji 6")


async def test_a_retried_attempt_resumes_the_task_an_earlier_attempt_submitted(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeMidjourneyProxy
) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url, headers={"mj-api-secret": fake.api_secret}) as http:
        task_id = (await http.post("/mj/submit/imagine", json={"prompt": "a red fox --v 7"})).json()["result"]
    job_id = await submit_job(
        db, parse_spec({"prompt": "a red fox"}), owner_user_id=OWNER, provider="midjourney", model="midjourney-v7"
    )
    await db.execute("update imagen.jobs set provider_job_id = $2 where id = $1", job_id, task_id)

    pipeline = local_pipeline(tmp_path, {"midjourney": lambda: provider_for(fake)})
    async with running_worker(db_url, pipeline, CONFIG):
        await wait_for_status(db, [job_id], timeout=15)

    await stored_image(db, tmp_path, job_id)
    assert len(fake.submissions) == 1  # only the earlier attempt's submit
    assert await progress_of(db, job_id)
