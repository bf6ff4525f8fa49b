"""The OpenAI provider end to end: jobs from INSERT to `done` through the real `openai` SDK against a local
fake of the Images API, on real Postgres and a real local store."""

from __future__ import annotations

import functools
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from imagen_worker.jobs import submit_job
from imagen_worker.providers.openai import OpenAIProvider
from imagen_worker.queue import WorkerConfig
from imagen_worker.spec import ImagePromptSpec

from ..fakes.openai_server import CONTENT_POLICY_MESSAGE, FakeOpenAI
from ..helpers import (
    one,
    provider_worker,
    stored_image,
    wait_for_failure,
    wait_for_status,
)

pytestmark = pytest.mark.asyncio

OWNER = uuid.UUID("00000000-0000-4000-8000-0000000000a1")


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


# The real pipeline with the provider under test as "openai".
openai_worker = functools.partial(provider_worker, "openai")


async def submit(db: asyncpg.Connection, model: str, **spec: Any) -> uuid.UUID:
    return await submit_job(db, ImagePromptSpec(**spec), owner_user_id=OWNER, provider="openai", model=model)


async def assert_stored(
    db: asyncpg.Connection, store: Path, job_id: uuid.UUID, size: tuple[int, int]
) -> asyncpg.Record:
    row = await stored_image(db, store, job_id, size)
    assert (row["provider"], row["owner_user_id"]) == ("openai", OWNER)
    return row


async def test_gpt_image_1_job_runs_from_insert_to_done_and_lands_in_the_store(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    job_id = await submit(
        db, "gpt-image-1", prompt="a red fox", quality="low", size="1536x1024", options={"output_format": "png"}
    )
    async with openai_worker(db_url, tmp_path, OpenAIProvider(api_key=fake.api_key, base_url=fake.base_url)):
        assert await wait_for_status(db, [job_id], timeout=20) == {job_id: "done"}
    row = await assert_stored(db, tmp_path, job_id, (1536, 1024))
    assert row["content_type"] == "image/png"
    [sent] = fake.requests
    assert sent.path == "/v1/images/generations"
    assert sent.headers["Authorization"] == f"Bearer {fake.api_key}"
    assert sent.json == {
        "model": "gpt-image-1",
        "prompt": "a red fox",
        "size": "1536x1024",
        "quality": "low",
        "output_format": "png",
    }
    # The exact cost from the answer's token usage, not a price table's estimate: 3 text tokens at $5/M + the
    # 400 output tokens a low-quality 1536x1024 image bills, at $40/M.
    assert await db.fetchval("select cost_usd from imagen.jobs where id = $1", job_id) == Decimal("0.016015")


@pytest.mark.parametrize(
    ("size", "quality", "cost"),
    [
        # OpenAI's documented output tokens for each size and quality, at $40/M, + 3 text tokens at $5/M.
        ("1024x1024", "low", "0.010895"),  # 272 tokens
        ("1024x1536", "low", "0.016335"),  # 408
        ("1024x1024", "medium", "0.042255"),  # 1056
        ("1536x1024", "medium", "0.062735"),  # 1568
        ("1024x1536", "high", "0.249615"),  # 6240
        ("1536x1024", "high", "0.248335"),  # 6208
    ],
)
async def test_gpt_image_1_cost_is_the_price_of_the_output_tokens_of_its_size_and_quality(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeOpenAI, size: str, quality: str, cost: str
) -> None:
    job_id = await submit(db, "gpt-image-1", prompt="a red fox", size=size, quality=quality)
    async with openai_worker(db_url, tmp_path, OpenAIProvider(api_key=fake.api_key, base_url=fake.base_url)):
        assert await wait_for_status(db, [job_id], timeout=20) == {job_id: "done"}
    assert await db.fetchval("select cost_usd from imagen.jobs where id = $1", job_id) == Decimal(cost)


async def test_dall_e_3_url_answer_is_downloaded_and_its_revised_prompt_kept_in_the_events(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    job_id = await submit(
        db,
        "dall-e-3",
        prompt="a lighthouse at dusk",
        quality="hd",
        size="1792x1024",
        options={"style": "natural", "response_format": "url"},
    )
    async with openai_worker(db_url, tmp_path, OpenAIProvider(api_key=fake.api_key, base_url=fake.base_url)):
        assert await wait_for_status(db, [job_id], timeout=20) == {job_id: "done"}
    await assert_stored(db, tmp_path, job_id, (1792, 1024))
    assert fake.downloads == 1
    [sent] = fake.requests
    assert sent.json is not None
    assert (sent.json["response_format"], sent.json["style"], sent.json["quality"]) == ("url", "natural", "hd")
    logs = [
        r["payload"]
        for r in await db.fetch("select payload from imagen.job_events where job_id = $1 and kind = 'log'", job_id)
    ]
    assert {"revised_prompt": "A detailed, vivid rendering of: a lighthouse at dusk"} in logs


async def test_refinement_with_previous_image_id_goes_through_the_edit_route_with_the_stored_image(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    async with openai_worker(db_url, tmp_path, OpenAIProvider(api_key=fake.api_key, base_url=fake.base_url)):
        first = await submit(db, "gpt-image-1", prompt="a cabin in snow", size="1024x1024")
        await wait_for_status(db, [first], ["done"], timeout=20)
        first_image = await one(db, "select id, sha256 from imagen.images where job_id = $1", first)
        second = await submit(db, "gpt-image-1", prompt="the same cabin at night", previous_image_id=first_image["id"])
        assert await wait_for_status(db, [second], timeout=20) == {second: "done"}
    assert fake.paths() == ["/v1/images/generations", "/v1/images/edits"]
    edit = fake.requests[1]
    assert edit.form["model"] == "gpt-image-1"
    assert edit.form["prompt"] == "the same cabin at night"
    assert hashlib.sha256(edit.files["image"]).hexdigest() == first_image["sha256"]
    await assert_stored(db, tmp_path, second, (1024, 1024))


async def test_spec_errors_name_the_field_and_allowed_values_before_any_request(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    cases = {
        await submit(
            db, "gpt-image-1", prompt="x", size="512x512"
        ): "spec.size: 512x512 is not offered by openai/gpt-image-1; use one of 1024x1024, 1536x1024, 1024x1536",
        await submit(
            db, "gpt-image-1", prompt="x", options={"background": "sparkly"}
        ): "spec.options.background: 'sparkly' is not offered by openai/gpt-image-1; use one of transparent, opaque, auto",
        await submit(
            db, "gpt-image-1", prompt="x", options={"output_format": "jpeg", "background": "transparent"}
        ): "spec.options.background: transparent needs output_format png or webp",
        await submit(
            db, "gpt-image-1", prompt="x", options={"style": "vivid"}
        ): "spec.options.style: not an option of openai/gpt-image-1; the options are output_format, background",
        await submit(
            db, "dall-e-3", prompt="x", quality="low"
        ): "spec.quality: low is not offered by openai/dall-e-3; use one of standard, hd",
        await submit(
            db, "dall-e-3", prompt="x", aspect_ratio="16:9"
        ): "spec.aspect_ratio: 16:9 is not offered by openai/dall-e-3; use one of 1:1, 7:4, 4:7",
        await submit(
            db, "dall-e-3", prompt="x", previous_image_id=uuid.uuid4()
        ): "spec.previous_image_id: openai/dall-e-3 cannot refine a previous image",
        await submit(
            db, "dall-e-2", prompt="x"
        ): "model: 'dall-e-2' is not a model of provider 'openai'; the models are gpt-image-1, dall-e-3",
    }
    async with openai_worker(db_url, tmp_path, OpenAIProvider(api_key=fake.api_key, base_url=fake.base_url)):
        await wait_for_status(db, list(cases), ["failed"], timeout=20)
    for job_id, expected in cases.items():
        row = await one(db, "select attempts, error from imagen.jobs where id = $1", job_id)
        assert row["attempts"] == 1
        assert expected in row["error"]
    assert fake.requests == []


async def test_missing_api_key_fails_the_job_with_a_message_naming_OPENAI_API_KEY(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    job_id = await submit(db, "gpt-image-1", prompt="a red fox")
    async with openai_worker(db_url, tmp_path, OpenAIProvider(base_url=fake.base_url)):
        await wait_for_status(db, [job_id], ["failed"], timeout=20)
    row = await one(db, "select attempts, error from imagen.jobs where id = $1", job_id)
    assert row["attempts"] == 1
    assert "set OPENAI_API_KEY" in row["error"]
    assert fake.requests == []


async def test_fifty_jobs_finish_through_429s_and_500s_on_thirty_percent_of_calls(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    faults = {0: "rate_limit", 3: "server_error", 6: "rate_limit"}
    fake.plan = lambda index: faults.get(index % 10)
    ids = [
        await submit(db, "gpt-image-1", prompt=f"fox number {i}", size="1024x1024", quality="low") for i in range(50)
    ]
    config = WorkerConfig(concurrency=8, retry_base_seconds=0.05, poll_interval=0.2)
    started = time.monotonic()
    async with openai_worker(db_url, tmp_path, OpenAIProvider(api_key=fake.api_key, base_url=fake.base_url), config):
        statuses = await wait_for_status(db, ids, timeout=30)
    assert set(statuses.values()) == {"done"}, {k: v for k, v in statuses.items() if v != "done"}
    for job_id in ids:
        await assert_stored(db, tmp_path, job_id, (1024, 1024))  # its own image, whole, pointed at by the job
    # The faults really happened (30 % of all calls), and every one was answered by a retry.
    assert fake.faults["rate_limit"] >= 10 and fake.faults["server_error"] >= 5
    assert len(fake.requests) == 50 + sum(fake.faults.values())
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("model", "fault", "message"),
    [
        ("dall-e-3", "content_policy", CONTENT_POLICY_MESSAGE),
        ("gpt-image-1", "moderation_blocked", "Your request was rejected by the safety system."),
    ],
)
async def test_content_policy_refusal_fails_the_job_once_with_the_providers_message(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeOpenAI, model: str, fault: str, message: str
) -> None:
    fake.plan = lambda _index: fault
    job_id = await submit(db, model, prompt="something the safety system refuses")
    async with openai_worker(db_url, tmp_path, OpenAIProvider(api_key=fake.api_key, base_url=fake.base_url)):
        await wait_for_status(db, [job_id], ["failed"], timeout=20)
    row = await one(db, "select attempts, error from imagen.jobs where id = $1", job_id)
    assert row["attempts"] == 1
    assert "content policy" in row["error"] and message in row["error"]
    assert len(fake.requests) == 1, "a refusal is not retried, by the SDK or the queue"
    assert await db.fetchval("select count(*) from imagen.images") == 0


@pytest.mark.parametrize(
    ("fault", "status", "says"),
    [
        ("rate_limit", "pending", "rate limited by OpenAI (429)"),
        ("server_error", "pending", "OpenAI failed (500)"),
        ("insufficient_quota", "failed", "out of quota"),
    ],
)
async def test_sdk_errors_are_classified_retryable_or_permanent_and_retry_after_is_honoured(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeOpenAI, fault: str, status: str, says: str
) -> None:
    fake.plan = lambda _index: fault
    fake.retry_after_ms = 30_000
    job_id = await submit(db, "gpt-image-1", prompt="a red fox")
    provider = OpenAIProvider(api_key=fake.api_key, base_url=fake.base_url, max_retries=0)
    async with openai_worker(db_url, tmp_path, provider, WorkerConfig(retry_base_seconds=5, poll_interval=0.2)):
        row = await wait_for_failure(db, job_id)
    assert (row["status"], row["attempts"]) == (status, 1)
    assert says in row["error"]
    assert "(request req_" in row["error"], "the provider's request id is kept for support"
    if fault == "rate_limit":
        assert 25 < row["due_in"] <= 31, "the queue waits the provider's retry-after-ms, not its own ~5 s backoff"
    elif status == "pending":
        assert 3 < row["due_in"] < 7, "the queue's own backoff"


@pytest.mark.parametrize("failure", ["timeout", "unreachable"])
async def test_timeouts_and_unreachable_endpoints_go_back_to_the_queue_as_provider_unavailable(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeOpenAI, failure: str
) -> None:
    if failure == "timeout":
        fake.plan = lambda _index: "slow"
        provider = OpenAIProvider(api_key=fake.api_key, base_url=fake.base_url, max_retries=0, timeout=0.3)
        says = "openai/gpt-image-1: the request timed out after 0.3 s"
    else:
        async with FakeOpenAI() as gone:
            dead_url = gone.base_url  # nothing listens here once the block ends
        provider = OpenAIProvider(api_key=fake.api_key, base_url=dead_url, max_retries=0)
        says = "openai/gpt-image-1: could not reach 127.0.0.1 (Connect"
    job_id = await submit(db, "gpt-image-1", prompt="a red fox")
    async with openai_worker(db_url, tmp_path, provider, WorkerConfig(retry_base_seconds=5, poll_interval=0.2)):
        row = await wait_for_failure(db, job_id)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert says in row["error"]


async def test_an_api_key_echoed_in_an_sdk_error_never_reaches_jobs_error(
    db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    key = "test-openai-key-f00dfacecafe1234"  # not shaped like sk-..., so only the provider's scrubbing hides it
    async with FakeOpenAI(api_key=key) as fake:
        fake.plan = lambda _index: "echo_key"
        job_id = await submit(db, "gpt-image-1", prompt="a red fox")
        async with openai_worker(db_url, tmp_path, OpenAIProvider(api_key=key, base_url=fake.base_url)):
            await wait_for_status(db, [job_id], ["failed"], timeout=20)
        assert key in json.dumps([r.headers for r in fake.requests]), "the fake did receive the key"
    row = await one(db, "select error from imagen.jobs where id = $1", job_id)
    assert "check OPENAI_API_KEY" in row["error"] and "***" in row["error"]
    everything = json.dumps([dict(r) for r in await db.fetch("select * from imagen.job_events")], default=str)
    assert key not in row["error"] and key not in everything
