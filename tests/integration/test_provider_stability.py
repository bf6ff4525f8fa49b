"""Stability v2beta through the real httpx client against a local fake that speaks its wire format:
jobs from INSERT to done with the image, its thumbnail and the returned seed; finish-reason and error
classification; asynchronous generations polled at /v2beta/results/{id}, and resumed on retry."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from PIL import Image

from imagen_worker.errors import ProviderRejected, ProviderUnavailable, RateLimited
from imagen_worker.jobs import submit_job
from imagen_worker.providers import GenerationRequest
from imagen_worker.providers.stability import StabilityProvider
from imagen_worker.queue import WorkerConfig
from imagen_worker.spec import parse_spec

from ..fakes.stability_server import FakeStability
from ..helpers import local_pipeline, running_worker, wait_for_status

pytestmark = pytest.mark.asyncio

OWNER = uuid.UUID("5f1d0a52-8f4b-4b8e-9a53-3a8f8a0c0001")
CONFIG = WorkerConfig(concurrency=2, poll_interval=0.5, retry_base_seconds=0.05, retry_cap_seconds=0.2)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeStability]:
    async with FakeStability() as server:
        yield server


def provider_for(fake: FakeStability) -> StabilityProvider:
    return StabilityProvider(api_key=fake.api_key, base_url=fake.base_url, poll_interval=0.05, poll_timeout=10)


async def run_jobs(
    db_url: str, db: asyncpg.Connection, store: Path, fake: FakeStability, *jobs: tuple[str, dict[str, Any]]
) -> list[uuid.UUID]:
    """Submit (model, spec) jobs for the stability provider, run a worker until all end; their ids."""
    pipeline = local_pipeline(store, {"stability": lambda: provider_for(fake)})
    ids = [
        await submit_job(db, parse_spec(spec), owner_user_id=OWNER, provider="stability", model=model)
        for model, spec in jobs
    ]
    async with running_worker(db_url, pipeline, CONFIG):
        await wait_for_status(db, ids, timeout=20)
    return ids


async def stored_image(db: asyncpg.Connection, store: Path, job_id: uuid.UUID) -> asyncpg.Record:
    """The done job's images row, after checking the image and its WebP thumbnail are in the store."""
    job = await db.fetchrow("select status, error, image_id from imagen.jobs where id = $1", job_id)
    assert job["status"] == "done", job["error"]
    image = await db.fetchrow("select * from imagen.images where id = $1", job["image_id"])
    assert image["job_id"] == job_id and image["provider"] == "stability"
    data = (store / image["bucket"] / image["path"]).read_bytes()
    assert len(data) == image["bytes"]
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (image["width"], image["height"])
    with Image.open(store / image["bucket"] / image["thumb_path"]) as thumb:
        assert thumb.format == "WEBP" and max(thumb.size) <= 256
    return image


async def test_core_job_goes_from_insert_to_done_with_image_thumbnail_and_the_returned_seed(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeStability
) -> None:
    spec = {
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "fog",
        "aspect_ratio": "16:9",
        "options": {"output_format": "webp", "style_preset": "photographic"},
    }
    [job_id] = await run_jobs(db_url, db, tmp_path, fake, ("core", spec))

    image = await stored_image(db, tmp_path, job_id)
    assert image["content_type"] == "image/webp"
    assert image["width"] > image["height"]
    assert image["seed"] == fake.served[-1].seed  # the seed header, not one we chose
    [call] = fake.posts()
    assert call.path == "/v2beta/stable-image/generate/core"
    assert call.headers["Authorization"] == f"Bearer {fake.api_key}"
    assert call.headers["Accept"] == "image/*"
    assert call.headers["Content-Type"].startswith("multipart/form-data")
    assert call.fields == {
        "output_format": "webp",
        "style_preset": "photographic",
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "fog",
        "aspect_ratio": "16:9",
    }


async def test_sd3_job_sends_model_mode_seed_and_the_nearest_aspect_ratio_for_a_size(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeStability
) -> None:
    [job_id] = await run_jobs(
        db_url, db, tmp_path, fake, ("sd3.5-large", {"prompt": "a red fox", "seed": 42, "size": "1024x576"})
    )

    image = await stored_image(db, tmp_path, job_id)
    assert image["seed"] == 42 and image["content_type"] == "image/png"
    [call] = fake.posts()
    assert call.path == "/v2beta/stable-image/generate/sd3"
    assert call.fields["model"] == "sd3.5-large"
    assert call.fields["mode"] == "text-to-image"
    assert call.fields["seed"] == "42"
    assert call.fields["aspect_ratio"] == "16:9"


async def test_content_filtered_finish_reason_fails_the_job_at_once(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeStability
) -> None:
    fake.plan = lambda _i: "content_filtered"
    [job_id] = await run_jobs(db_url, db, tmp_path, fake, ("core", {"prompt": "something filtered"}))

    job = await db.fetchrow("select status, attempts, error, image_id from imagen.jobs where id = $1", job_id)
    assert job["status"] == "failed" and job["attempts"] == 1
    assert "CONTENT_FILTERED" in job["error"] and job["image_id"] is None
    assert await db.fetchval("select count(*) from imagen.images") == 0


async def test_rate_limit_and_server_error_are_retried_until_the_job_is_done(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeStability
) -> None:
    fake.plan = lambda i: {0: "rate_limit", 1: "server_error"}.get(i)
    [job_id] = await run_jobs(db_url, db, tmp_path, fake, ("ultra", {"prompt": "a busy API"}))

    await stored_image(db, tmp_path, job_id)
    assert await db.fetchval("select attempts from imagen.jobs where id = $1", job_id) == 3
    errors = await db.fetch(
        "select payload ->> 'error' as error from imagen.job_events "
        "where job_id = $1 and kind = 'state' and payload ->> 'status' = 'pending' and payload ? 'error' order by id",
        job_id,
    )
    assert "rate limit" in errors[0]["error"] and "(429)" in errors[0]["error"]
    assert "(500)" in errors[1]["error"]


@pytest.mark.parametrize(
    ("fault", "error", "words"),
    [
        ("bad_request", ProviderRejected, "prompt: cannot be empty"),
        ("unauthorized", ProviderRejected, "STABILITY_API_KEY"),
        ("content_moderation", ProviderRejected, "content moderation"),
        ("payload_too_large", ProviderRejected, "too large"),
        ("invalid_language", ProviderRejected, "English is the only supported language"),
        ("rate_limit", RateLimited, "rate limit"),
        ("server_error", ProviderUnavailable, "(500)"),
    ],
)
async def test_error_answers_are_classified_retryable_or_permanent_with_the_apis_message(
    fake: FakeStability, fault: str, error: type[Exception], words: str
) -> None:
    fake.plan = lambda _i: fault
    request = GenerationRequest(spec=parse_spec({"prompt": "x"}), model="core", prompt="x")
    ctx: Any = SimpleNamespace(job=SimpleNamespace(id=uuid.uuid4(), provider_job_id=None))

    with pytest.raises(error) as raised:
        await provider_for(fake).generate(request, ctx)
    assert type(raised.value) is error
    assert words in str(raised.value)
    assert fake.api_key not in str(raised.value)


async def test_creative_upscale_polls_results_until_the_image_is_ready(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeStability
) -> None:
    pipeline = local_pipeline(tmp_path, {"stability": lambda: provider_for(fake)})
    async with running_worker(db_url, pipeline, CONFIG):
        source = await submit_job(db, parse_spec({"prompt": "a small sketch"}), owner_user_id=OWNER)
        await wait_for_status(db, [source], ["done"], timeout=20)
        source_image = await db.fetchval("select image_id from imagen.jobs where id = $1", source)
        spec = parse_spec({"prompt": "a detailed painting", "previous_image_id": str(source_image)})
        job_id = await submit_job(db, spec, owner_user_id=OWNER, provider="stability", model="upscale-creative")
        await wait_for_status(db, [job_id], timeout=20)

    image = await stored_image(db, tmp_path, job_id)
    [call] = fake.posts()
    assert call.path == "/v2beta/stable-image/upscale/creative"
    assert call.files["image"] > 0 and "aspect_ratio" not in call.fields
    [result_id] = fake.results
    assert await db.fetchval("select provider_job_id from imagen.jobs where id = $1", job_id) == result_id
    assert fake.counts[f"GET /v2beta/results/{result_id}"] == fake.result_polls + 1
    assert image["width"] == 192


async def test_a_retry_collects_the_asynchronous_generation_an_earlier_attempt_started(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeStability
) -> None:
    result_id = fake.add_result("a red fox")
    job_id = await submit_job(
        db, parse_spec({"prompt": "a red fox"}), owner_user_id=OWNER, provider="stability", model="core"
    )
    await db.execute("update imagen.jobs set provider_job_id = $2 where id = $1", job_id, result_id)

    pipeline = local_pipeline(tmp_path, {"stability": lambda: provider_for(fake)})
    async with running_worker(db_url, pipeline, CONFIG):
        await wait_for_status(db, [job_id], timeout=20)

    image = await stored_image(db, tmp_path, job_id)
    assert fake.posts() == []  # nothing generated (or paid for) twice
    assert image["seed"] == fake.results[result_id].seed


async def test_generate_answering_with_an_id_is_polled_to_the_image(
    db_url: str, db: asyncpg.Connection, tmp_path: Path, fake: FakeStability
) -> None:
    fake.plan = lambda _i: "async"
    [job_id] = await run_jobs(db_url, db, tmp_path, fake, ("core", {"prompt": "slow and steady"}))

    await stored_image(db, tmp_path, job_id)
    [result_id] = fake.results
    assert fake.counts[f"GET /v2beta/results/{result_id}"] == fake.result_polls + 1
