"""Replicate predictions through the real httpx client against a local fake of its API: a signed webhook
finishes the job without polling, polling finishes it without a webhook and when a webhook is lost, a
cancelled job cancels its prediction upstream, and a retried attempt resumes its prediction."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from PIL import Image

from imagen_worker.db import create_pool
from imagen_worker.errors import ProviderRejected, ProviderUnavailable, RateLimited
from imagen_worker.jobs import cancel_job, submit_job
from imagen_worker.providers import GenerationRequest
from imagen_worker.providers.replicate import ReplicateProvider
from imagen_worker.queue import WorkerConfig
from imagen_worker.spec import parse_spec
from imagen_worker.webhook_server import WebhookServer
from imagen_worker.webhooks import WebhookReceiver

from ..fakes.replicate_server import FakeReplicate
from ..helpers import local_pipeline, running_worker, wait_for_listeners, wait_for_status

pytestmark = pytest.mark.asyncio

OWNER = uuid.UUID("5f1d0a52-8f4b-4b8e-9a53-3a8f8a0c0002")
MODEL = "black-forest-labs/flux-schnell"
CONFIG = WorkerConfig(concurrency=2, poll_interval=0.5, retry_base_seconds=0.05, retry_cap_seconds=0.2)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeReplicate]:
    async with FakeReplicate() as server:
        yield server


@pytest_asyncio.fixture
async def webhooks(db_url: str, fake: FakeReplicate) -> AsyncIterator[WebhookServer]:
    """The worker's webhook endpoint, verifying with the fake's signing secret."""
    pool = await create_pool(db_url, migrate=False, min_size=1, max_size=2)
    try:
        async with WebhookServer(WebhookReceiver(pool, {"replicate": fake.webhook_secret})) as server:
            yield server
    finally:
        await pool.close()


def provider_for(fake: FakeReplicate, *, webhook_url: str = "", poll_interval: float = 0.05) -> ReplicateProvider:
    return ReplicateProvider(
        api_token=fake.api_token,
        base_url=fake.base_url,
        webhook_url=webhook_url,
        poll_interval=poll_interval,
        poll_timeout=20,
    )


async def submit(db: asyncpg.Connection, prompt: str = "a red fox in snow", **spec: Any) -> uuid.UUID:
    return await submit_job(
        db, parse_spec({"prompt": prompt, **spec}), owner_user_id=OWNER, provider="replicate", model=MODEL
    )


async def stored_image(db: asyncpg.Connection, store: Path, job_id: uuid.UUID) -> asyncpg.Record:
    job = await db.fetchrow("select status, error, image_id from imagen.jobs where id = $1", job_id)
    assert job["status"] == "done", job["error"]
    image = await db.fetchrow("select * from imagen.images where id = $1", job["image_id"])
    with Image.open(io.BytesIO((store / image["bucket"] / image["path"]).read_bytes())) as img:
        assert img.format == "PNG" and img.size == (image["width"], image["height"])
    with Image.open(store / image["bucket"] / image["thumb_path"]) as thumb:
        assert thumb.format == "WEBP"
    return image


async def events(db: asyncpg.Connection, job_id: uuid.UUID, kind: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "select payload, delivery_id from imagen.job_events where job_id = $1 and kind = $2 order by id", job_id, kind
    )


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_signed_webhook_finishes_the_job_without_polling(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeReplicate, webhooks: WebhookServer
) -> None:
    url = f"{webhooks.base_url}/replicate"
    # A 15 s poll interval: only the webhook can finish this job in time.
    pipeline = local_pipeline(tmp_path, {"replicate": lambda: provider_for(fake, webhook_url=url, poll_interval=15)})
    started = time.monotonic()
    async with running_worker(db_url, pipeline, CONFIG):
        job_id = await submit(db, aspect_ratio="3:2")
        await wait_for_status(db, [job_id], timeout=10)
    elapsed = time.monotonic() - started

    image = await stored_image(db, tmp_path, job_id)
    assert elapsed < 10
    [prediction_id] = fake.predictions
    prediction = fake.predictions[prediction_id]
    assert prediction["webhook"] == url and prediction["webhook_events_filter"] == ["completed"]
    assert prediction["input"]["aspect_ratio"] == "3:2" and prediction["input"]["output_format"] == "png"
    assert fake.get_count(prediction_id) == 0  # never polled
    [delivery] = fake.deliveries
    assert delivery.status == 200
    [hook] = await events(db, job_id, "webhook")
    assert hook["delivery_id"] == f"replicate:{delivery.headers['webhook-id']}"
    assert hook["payload"]["status"] == "succeeded"
    assert hook["payload"]["output"] == prediction["output"]
    assert "input" not in hook["payload"] and "logs" not in hook["payload"]
    assert await db.fetchval("select provider_job_id from imagen.jobs where id = $1", job_id) == prediction_id
    assert image["seed"] == hook["payload"]["seed"]  # the seed Replicate reported in its logs


async def test_without_a_webhook_url_the_prediction_is_polled_to_completion_with_progress(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeReplicate
) -> None:
    pipeline = local_pipeline(tmp_path, {"replicate": lambda: provider_for(fake)})
    async with running_worker(db_url, pipeline, CONFIG):
        job_id = await submit(db, seed=7)
        await wait_for_status(db, [job_id], timeout=10)

    image = await stored_image(db, tmp_path, job_id)
    [prediction_id] = fake.predictions
    assert "webhook" not in fake.predictions[prediction_id]
    assert fake.get_count(prediction_id) >= 2
    assert image["seed"] == 7
    assert await events(db, job_id, "webhook") == []
    progress = [e["payload"]["progress"] for e in await events(db, job_id, "progress")]
    assert 0.25 in progress and 0.5 in progress
    assert progress == sorted(progress)


async def test_a_lost_webhook_falls_back_to_polling_within_the_poll_interval(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeReplicate, webhooks: WebhookServer
) -> None:
    fake.deliver_webhooks = False
    url = f"{webhooks.base_url}/replicate"
    pipeline = local_pipeline(tmp_path, {"replicate": lambda: provider_for(fake, webhook_url=url, poll_interval=0.4)})
    async with running_worker(db_url, pipeline, CONFIG):
        job_id = await submit(db)
        await wait_for_status(db, [job_id], timeout=10)

    await stored_image(db, tmp_path, job_id)
    [prediction_id] = fake.predictions
    assert fake.predictions[prediction_id]["webhook"] == url
    assert fake.deliveries == [] and await events(db, job_id, "webhook") == []
    assert fake.get_count(prediction_id) >= 1


async def test_cancelling_the_job_cancels_the_prediction_upstream(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeReplicate
) -> None:
    fake.hold = True
    pipeline = local_pipeline(tmp_path, {"replicate": lambda: provider_for(fake)})
    async with running_worker(db_url, pipeline, CONFIG):
        await wait_for_listeners(db)  # the cancel reaches the handler through imagen_job_signals
        job_id = await submit(db)

        async def recorded() -> bool:
            return await db.fetchval("select provider_job_id from imagen.jobs where id = $1", job_id) is not None

        await until(recorded)
        prediction_id = await db.fetchval("select provider_job_id from imagen.jobs where id = $1", job_id)
        assert await cancel_job(db, job_id) == "cancelled"

        async def cancelled_upstream() -> bool:
            return fake.cancelled == [prediction_id]

        await until(cancelled_upstream)

    assert fake.predictions[prediction_id]["status"] == "canceled"
    assert await db.fetchval("select status from imagen.jobs where id = $1", job_id) == "cancelled"
    assert await db.fetchval("select count(*) from imagen.images") == 0


async def test_a_retried_attempt_resumes_the_prediction_instead_of_creating_another(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeReplicate
) -> None:
    fake.file_failures = 1  # attempt 1 cannot download the output: a retryable failure
    pipeline = local_pipeline(tmp_path, {"replicate": lambda: provider_for(fake)})
    async with running_worker(db_url, pipeline, CONFIG):
        job_id = await submit(db)
        await wait_for_status(db, [job_id], timeout=10)

    await stored_image(db, tmp_path, job_id)
    assert fake.creates == 1
    [prediction_id] = fake.predictions
    job = await db.fetchrow("select attempts, provider_job_id from imagen.jobs where id = $1", job_id)
    assert job["attempts"] == 2 and job["provider_job_id"] == prediction_id
    assert fake.counts[f"GET /files/{prediction_id}/out-0.png"] == 2


async def test_worker_shutdown_leaves_the_prediction_running_and_the_next_worker_resumes_it(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeReplicate
) -> None:
    fake.hold = True
    config = WorkerConfig(concurrency=2, poll_interval=0.5, shutdown_grace=0.2)
    pipeline = local_pipeline(tmp_path, {"replicate": lambda: provider_for(fake)})
    async with running_worker(db_url, pipeline, config):
        job_id = await submit(db)

        async def recorded() -> bool:
            return await db.fetchval("select provider_job_id from imagen.jobs where id = $1", job_id) is not None

        await until(recorded)
    assert await db.fetchval("select status from imagen.jobs where id = $1", job_id) == "pending"
    [prediction_id] = fake.predictions
    assert fake.cancelled == []

    fake.finish(prediction_id)
    async with running_worker(db_url, local_pipeline(tmp_path, {"replicate": lambda: provider_for(fake)}), CONFIG):
        await wait_for_status(db, [job_id], timeout=10)
    await stored_image(db, tmp_path, job_id)
    assert fake.creates == 1


async def test_a_prediction_outlasting_the_job_timeout_is_resumed_on_retry_not_timed_out(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeReplicate
) -> None:
    """The poll cap (20 s here, 300 s by default) is longer than the job's timeout (2 s): the provider
    stops waiting a margin before the timeout with a retryable error, so the job keeps its prediction
    and the next attempt resumes it."""
    fake.hold = True
    config = WorkerConfig(
        concurrency=2, poll_interval=0.5, job_timeout=2.0, retry_base_seconds=0.05, retry_cap_seconds=0.2
    )
    pipeline = local_pipeline(tmp_path, {"replicate": lambda: provider_for(fake)})
    async with running_worker(db_url, pipeline, config):
        job_id = await submit(db)

        async def first_attempt_gave_up() -> bool:
            return await db.fetchval("select error from imagen.jobs where id = $1", job_id) is not None

        await until(first_attempt_gave_up, timeout=10)
        status, error = await db.fetchrow("select status, error from imagen.jobs where id = $1", job_id)
        assert status in ("pending", "running")  # retried (and perhaps already resumed), not failed
        [prediction_id] = fake.predictions
        assert error.startswith(f"Replicate prediction {prediction_id} did not finish within ")
        assert error.endswith("a retry resumes it") and "timed out" not in error
        fake.finish(prediction_id)
        await wait_for_status(db, [job_id], timeout=10)
    await stored_image(db, tmp_path, job_id)
    assert fake.creates == 1
    job = await db.fetchrow("select attempts, provider_job_id from imagen.jobs where id = $1", job_id)
    assert job["attempts"] >= 2 and job["provider_job_id"] == prediction_id


async def test_a_failed_prediction_fails_the_job_with_replicates_error(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeReplicate
) -> None:
    fake.plan = lambda _i: "nsfw"
    pipeline = local_pipeline(tmp_path, {"replicate": lambda: provider_for(fake)})
    async with running_worker(db_url, pipeline, CONFIG):
        job_id = await submit(db)
        await wait_for_status(db, [job_id], timeout=10)

    job = await db.fetchrow("select status, attempts, error from imagen.jobs where id = $1", job_id)
    assert job["status"] == "failed" and job["attempts"] == 1
    assert "NSFW content detected" in job["error"]


@pytest.mark.parametrize(
    ("setup", "error", "words"),
    [
        ("bad_token", ProviderRejected, "REPLICATE_API_TOKEN"),
        ("unknown_model", ProviderRejected, "(404)"),
        ("rate_limit", RateLimited, "throttled"),
        ("server_error", ProviderUnavailable, "(500)"),
    ],
)
async def test_error_answers_are_classified_retryable_or_permanent(
    fake: FakeReplicate, setup: str, error: type[Exception], words: str
) -> None:
    model = MODEL
    provider = provider_for(fake)
    if setup == "bad_token":
        provider = ReplicateProvider(api_token="r8_wrongtoken012345", base_url=fake.base_url, webhook_url="")
    elif setup == "unknown_model":
        model = "someone/no-such-model"
    else:
        fake.plan = lambda _i: setup
    request = GenerationRequest(spec=parse_spec({"prompt": "x"}), model=model, prompt="x")
    ctx: Any = SimpleNamespace(job=SimpleNamespace(id=uuid.uuid4(), provider_job_id=None))

    with pytest.raises(error) as raised:
        await provider.generate(request, ctx)
    assert type(raised.value) is error and words in str(raised.value)
    if setup == "rate_limit":
        assert raised.value.retry_after == 1.0  # type: ignore[attr-defined]


async def test_prefer_wait_takes_the_finished_prediction_from_the_create_answer(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeReplicate
) -> None:
    def provider() -> ReplicateProvider:
        return ReplicateProvider(
            api_token=fake.api_token, base_url=fake.base_url, webhook_url="", poll_interval=15, prefer_wait=5
        )

    async with running_worker(db_url, local_pipeline(tmp_path, {"replicate": provider}), CONFIG):
        job_id = await submit(db)
        await wait_for_status(db, [job_id], timeout=10)

    await stored_image(db, tmp_path, job_id)
    [prediction_id] = fake.predictions
    assert fake.get_count(prediction_id) == 0  # the create call itself answered with the output
