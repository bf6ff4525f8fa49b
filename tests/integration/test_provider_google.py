"""The Google provider end to end: Imagen on Vertex AI and Gemini image output with an API key, both through
`generate_content`, jobs from INSERT to `done` through the real `google-genai` SDK against a local fake, on
real Postgres and a local store."""

from __future__ import annotations

import functools
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import google.oauth2.credentials
import pytest
import pytest_asyncio

from imagen_worker.jobs import submit_job
from imagen_worker.providers.google import GoogleProvider
from imagen_worker.queue import WorkerConfig
from imagen_worker.spec import ImagePromptSpec

from ..fakes.google_server import RAI_REFUSAL, FakeGoogle, decode_bytes, pick
from ..helpers import (
    one,
    provider_worker,
    stored_image,
    wait_for_failure,
    wait_for_status,
)

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession from ClientSession is discouraged"),
]

OWNER = uuid.UUID("00000000-0000-4000-8000-0000000000b2")
PROJECT, LOCATION = "imagen-test-project", "europe-west4"
IMAGEN, GEMINI = "imagen-4.0-generate-001", "gemini-2.5-flash-image"


@pytest.fixture(autouse=True)
def no_ambient_google_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test passes configures the provider (and the SDK), never the developer's environment."""
    for name in (
        "GOOGLE_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_CLOUD_LOCATION",
        "GOOGLE_BASE_URL",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_GENAI_USE_ENTERPRISE",
        "GOOGLE_GENAI_API_VERSION",
        "GOOGLE_VERTEX_BASE_URL",
        "GOOGLE_GEMINI_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeGoogle]:
    async with FakeGoogle() as server:
        yield server


def provider_for(fake: FakeGoogle, **kwargs: Any) -> GoogleProvider:
    """Vertex AI (project, location, a bearer token the fake accepts) and a Gemini API key, both at the fake."""
    settings: dict[str, Any] = {
        "api_key": fake.api_key,
        "project": PROJECT,
        "location": LOCATION,
        "credentials": google.oauth2.credentials.Credentials(token=fake.access_token),  # type: ignore[no-untyped-call]
        "base_url": fake.base_url,
        "retry_initial_delay": 0.05,
        **kwargs,
    }
    return GoogleProvider(**settings)


# The real pipeline with the provider under test as "google".
google_worker = functools.partial(provider_worker, "google")


async def submit(db: asyncpg.Connection, model: str, **spec: Any) -> uuid.UUID:
    return await submit_job(db, ImagePromptSpec(**spec), owner_user_id=OWNER, provider="google", model=model)


async def assert_stored(
    db: asyncpg.Connection, store: Path, job_id: uuid.UUID, size: tuple[int, int]
) -> asyncpg.Record:
    row = await stored_image(db, store, job_id, size)
    assert (row["provider"], row["content_type"], row["owner_user_id"]) == ("google", "image/png", OWNER)
    return row


async def test_imagen_job_on_vertex_ai_runs_through_generate_content_from_insert_to_done_and_lands_in_the_store(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeGoogle
) -> None:
    job_id = await submit(db, IMAGEN, prompt="a red fox in snow", aspect_ratio="9:16", seed=7)
    async with google_worker(db_url, tmp_path, provider_for(fake)):
        assert await wait_for_status(db, [job_id], timeout=20) == {job_id: "done"}
    row = await assert_stored(db, tmp_path, job_id, (768, 1408))
    assert row["seed"] == 7
    [sent] = fake.requests
    assert sent.path.endswith(
        f"/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{IMAGEN}:generateContent"
    ), "not the deprecated generate_images (:predict)"
    assert sent.headers["Authorization"] == f"Bearer {fake.access_token}"
    assert "x-goog-api-key" not in {h.lower() for h in sent.headers}, (
        "Vertex AI is reached with credentials, not the key"
    )
    assert sent.json["contents"] == [{"role": "user", "parts": [{"text": "a red fox in snow"}]}]
    generation = sent.json["generationConfig"]
    assert (generation["responseModalities"], generation["candidateCount"], generation["seed"]) == (["IMAGE"], 1, 7)
    assert generation["imageConfig"] == {"aspectRatio": "9:16", "imageOutputOptions": {"mimeType": "image/png"}}


async def test_imagen_options_go_into_generate_contents_image_config(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeGoogle
) -> None:
    job_id = await submit(
        db,
        IMAGEN,
        prompt="a crowd at a concert",
        size="1408x768",
        options={"person_generation": "allow_adult", "image_size": "2K"},
    )
    async with google_worker(db_url, tmp_path, provider_for(fake)):
        assert await wait_for_status(db, [job_id], timeout=20) == {job_id: "done"}
    await assert_stored(db, tmp_path, job_id, (2816, 1536))
    [sent] = fake.requests
    image_config = sent.json["generationConfig"]["imageConfig"]
    assert (image_config["aspectRatio"], image_config["personGeneration"], image_config["imageSize"]) == (
        "16:9",
        "ALLOW_ADULT",
        "2K",
    )
    assert "seed" not in sent.json["generationConfig"]


async def test_gemini_job_with_an_api_key_runs_from_insert_to_done_and_lands_in_the_store(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeGoogle
) -> None:
    job_id = await submit(db, GEMINI, prompt="a teapot shaped like a whale", size="1344x768", seed=11)
    async with google_worker(db_url, tmp_path, provider_for(fake)):
        assert await wait_for_status(db, [job_id], timeout=20) == {job_id: "done"}
    await assert_stored(db, tmp_path, job_id, (1344, 768))
    [sent] = fake.requests
    assert sent.mode == "gemini_api"
    assert sent.path.endswith(f"/models/{GEMINI}:generateContent")  # under v1 or v1beta, as the SDK version picks
    assert sent.headers["x-goog-api-key"] == fake.api_key
    generation = sent.json["generationConfig"]
    assert "IMAGE" in generation["responseModalities"]
    assert (pick(generation["imageConfig"], "aspectRatio"), generation["seed"]) == ("16:9", 11)
    logs = [
        r["payload"]
        for r in await db.fetch("select payload from imagen.job_events where job_id = $1 and kind = 'log'", job_id)
    ]
    assert {"model_text": "Here is the image you asked for."} in logs


async def test_gemini_refinement_sends_the_stored_previous_image_inline(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeGoogle
) -> None:
    async with google_worker(db_url, tmp_path, provider_for(fake)):
        first = await submit(db, GEMINI, prompt="a paper boat")
        await wait_for_status(db, [first], ["done"], timeout=20)
        first_image = await one(db, "select id, sha256 from imagen.images where job_id = $1", first)
        second = await submit(db, GEMINI, prompt="the same boat, on fire", previous_image_id=first_image["id"])
        assert await wait_for_status(db, [second], timeout=20) == {second: "done"}
    await assert_stored(db, tmp_path, second, (1024, 1024))
    parts = fake.requests[1].json["contents"][0]["parts"]
    assert parts[0] == {"text": "the same boat, on fire"}
    blob = parts[1]["inlineData"]
    assert blob.get("mimeType", blob.get("mime_type")) == "image/png"  # proto3 JSON takes either spelling
    assert hashlib.sha256(decode_bytes(blob["data"])).hexdigest() == first_image["sha256"]


async def test_a_negative_prompt_is_refused_for_imagen_naming_the_field_and_folded_into_geminis_prompt(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeGoogle
) -> None:
    """generate_content has no negative prompt: an Imagen job that sets one fails before any request (even
    imagen-3.0-generate-001, which generate_images gave a negativePrompt); Gemini, which follows
    instructions, gets it folded into the prompt as before."""
    imagen = [
        await submit(db, model, prompt="a garden", negative_prompt="people")
        for model in ("imagen-3.0-generate-001", "imagen-3.0-generate-002", IMAGEN)
    ]
    gemini = await submit(db, GEMINI, prompt="a garden", negative_prompt="people")
    async with google_worker(db_url, tmp_path, provider_for(fake)):
        statuses = await wait_for_status(db, [*imagen, gemini], timeout=20)
    assert statuses == {**dict.fromkeys(imagen, "failed"), gemini: "done"}
    for job_id in imagen:
        row = await one(db, "select model, attempts, error from imagen.jobs where id = $1", job_id)
        assert row["attempts"] == 1
        assert (
            f"spec.negative_prompt: google/{row['model']} takes no negative prompt through generate_content"
            in (row["error"])
        )
    [sent] = fake.requests
    assert sent.model == GEMINI
    assert sent.json["contents"][0]["parts"] == [{"text": "a garden. Avoid: people"}]


async def test_spec_errors_name_the_field_and_allowed_values_before_any_request(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeGoogle
) -> None:
    cases = {
        await submit(
            db, IMAGEN, prompt="x", aspect_ratio="21:9"
        ): "spec.aspect_ratio: 21:9 is not offered by google/imagen-4.0-generate-001; use one of 1:1, 3:4, 4:3, 9:16, 16:9",
        await submit(
            db, IMAGEN, prompt="x", size="1024x768"
        ): "spec.size: 1024x768 is not offered by google/imagen-4.0-generate-001; use one of 1024x1024, 896x1280, 1280x896, 768x1408, 1408x768",
        await submit(
            db, IMAGEN, prompt="x", quality="hd"
        ): "spec.quality: hd is not offered by google/imagen-4.0-generate-001; use one of none (leave it unset)",
        await submit(
            db, IMAGEN, prompt="x", previous_image_id=uuid.uuid4()
        ): "spec.previous_image_id: google/imagen-4.0-generate-001 cannot refine a previous image",
        await submit(
            db, IMAGEN, prompt="x", options={"person_generation": "dont_allow"}
        ): "spec.options.person_generation: 'dont_allow' is not offered by google/imagen-4.0-generate-001; use one of allow_none, allow_adult, allow_all",
        await submit(
            db, "imagen-3.0-generate-002", prompt="x", options={"image_size": "2K"}
        ): "spec.options.image_size: not an option of google/imagen-3.0-generate-002; the options are person_generation",
        await submit(
            db, GEMINI, prompt="x", options={"person_generation": "allow_adult"}
        ): "spec.options.person_generation: google/gemini-2.5-flash-image takes it only on Vertex AI",
    }
    async with google_worker(db_url, tmp_path, provider_for(fake)):
        await wait_for_status(db, list(cases), ["failed"], timeout=20)
    for job_id, expected in cases.items():
        row = await one(db, "select attempts, error from imagen.jobs where id = $1", job_id)
        assert row["attempts"] == 1
        assert expected in row["error"]
    assert fake.requests == []


async def test_missing_google_settings_fail_the_job_naming_the_variable_to_set(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeGoogle
) -> None:
    imagen = await submit(db, IMAGEN, prompt="a red fox")
    gemini = await submit(db, GEMINI, prompt="a red fox")
    async with google_worker(db_url, tmp_path, GoogleProvider(base_url=fake.base_url)):
        await wait_for_status(db, [imagen, gemini], ["failed"], timeout=20)
    errors = {r["id"]: r["error"] for r in await db.fetch("select id, error from imagen.jobs")}
    assert "set GOOGLE_CLOUD_PROJECT" in errors[imagen]
    assert "set GOOGLE_API_KEY" in errors[gemini]
    assert fake.requests == []


async def test_fifty_jobs_finish_through_429s_and_500s_on_thirty_percent_of_calls(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeGoogle
) -> None:
    faults = {0: "rate_limit", 3: "server_error", 6: "rate_limit"}
    fake.plan = lambda index: faults.get(index % 10)
    ids = [await submit(db, IMAGEN if i % 2 else GEMINI, prompt=f"fox number {i}") for i in range(50)]
    config = WorkerConfig(concurrency=8, retry_base_seconds=0.05, poll_interval=0.2)
    started = time.monotonic()
    async with google_worker(db_url, tmp_path, provider_for(fake), config):
        statuses = await wait_for_status(db, ids, timeout=30)
    assert set(statuses.values()) == {"done"}, {k: v for k, v in statuses.items() if v != "done"}
    for job_id in ids:
        await assert_stored(db, tmp_path, job_id, (1024, 1024))  # its own image, whole, pointed at by the job
    # The faults really happened (30 % of all calls), on both routes, and every one was answered by a retry.
    assert fake.faults["rate_limit"] >= 10 and fake.faults["server_error"] >= 5
    assert len(fake.requests) == 50 + sum(fake.faults.values())
    assert {r.mode for r in fake.requests} == {"vertex", "gemini_api"}
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("model", "fault", "message"),
    [
        (IMAGEN, "content_policy", RAI_REFUSAL),
        (IMAGEN, "prompt_blocked", "blocked the prompt (PROHIBITED_CONTENT)"),
        (IMAGEN, "image_safety", "returned no image: blocked (IMAGE_SAFETY)"),
        (GEMINI, "prompt_blocked", "blocked the prompt (PROHIBITED_CONTENT)"),
        (GEMINI, "image_safety", "returned no image: blocked (IMAGE_SAFETY)"),
    ],
)
async def test_safety_refusal_fails_the_job_once_with_the_providers_reason(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeGoogle, model: str, fault: str, message: str
) -> None:
    fake.plan = lambda _index: fault
    job_id = await submit(db, model, prompt="something the safety filters refuse")
    async with google_worker(db_url, tmp_path, provider_for(fake)):
        await wait_for_status(db, [job_id], ["failed"], timeout=20)
    row = await one(db, "select attempts, error from imagen.jobs where id = $1", job_id)
    assert row["attempts"] == 1
    assert message in row["error"]
    assert len(fake.requests) == 1, "a refusal is not retried, by the SDK or the queue"
    assert await db.fetchval("select count(*) from imagen.images") == 0


RATE_LIMITED = "rate limited by Google (429 RESOURCE_EXHAUSTED)"


@pytest.mark.parametrize(
    ("model", "fault", "says", "wait"),
    [
        # Gemini's quota 429 says when only in its body: a google.rpc.RetryInfo retryDelay, no header.
        (GEMINI, "rate_limit", RATE_LIMITED, "Google's"),
        # Only a Retry-After header, no details.
        (GEMINI, "rate_limit_retry_after", RATE_LIMITED, "Google's"),
        (IMAGEN, "rate_limit_retry_after", RATE_LIMITED, "Google's"),
        # Vertex AI's quota 429 says nothing of when: the queue's own backoff.
        (IMAGEN, "rate_limit", RATE_LIMITED, "the queue's"),
        (IMAGEN, "unavailable", "Google failed (503 UNAVAILABLE)", "the queue's"),
    ],
)
async def test_sdk_errors_go_back_to_the_queue_after_the_wait_google_asks_for_else_the_queues_backoff(
    db: asyncpg.Connection,
    db_url: str,
    tmp_path: Path,
    fake: FakeGoogle,
    model: str,
    fault: str,
    says: str,
    wait: str,
) -> None:
    fake.plan = lambda _index: fault
    fake.retry_after = 30
    job_id = await submit(db, model, prompt="a red fox")
    provider = provider_for(fake, max_retries=0)
    async with google_worker(db_url, tmp_path, provider, WorkerConfig(retry_base_seconds=5, poll_interval=0.2)):
        row = await wait_for_failure(db, job_id)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert says in row["error"]
    if wait == "Google's":
        assert 25 < row["due_in"] <= 31, "the queue waits the 30 s Google asked for, not its own ~5 s backoff"
    else:
        assert 3 < row["due_in"] < 7, "the queue's own ~5 s backoff"


@pytest.mark.parametrize("failure", ["timeout", "unreachable"])
async def test_timeouts_and_unreachable_endpoints_go_back_to_the_queue_as_provider_unavailable(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, fake: FakeGoogle, failure: str
) -> None:
    if failure == "timeout":
        fake.plan = lambda _index: "slow"
        provider = provider_for(fake, max_retries=0, timeout=0.5)
        says = "google/gemini-2.5-flash-image: the request timed out after 0.5 s"
    else:
        async with FakeGoogle() as gone:
            dead_url = gone.base_url  # nothing listens here once the block ends
        provider = provider_for(fake, max_retries=0, base_url=dead_url)
        says = "google/gemini-2.5-flash-image: could not reach Google (Client"
    job_id = await submit(db, GEMINI, prompt="a red fox")
    async with google_worker(db_url, tmp_path, provider, WorkerConfig(retry_base_seconds=5, poll_interval=0.2)):
        row = await wait_for_failure(db, job_id)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert says in row["error"]


async def test_an_api_key_echoed_in_an_sdk_error_never_reaches_jobs_error(
    db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    key = "test-gemini-key-f00dfacecafe5678"  # not shaped like AIza..., so only the provider's scrubbing hides it
    async with FakeGoogle(api_key=key) as fake:
        fake.plan = lambda _index: "echo_key"
        job_id = await submit(db, GEMINI, prompt="a red fox")
        async with google_worker(db_url, tmp_path, provider_for(fake)):
            await wait_for_status(db, [job_id], ["failed"], timeout=20)
        assert fake.requests[0].headers["x-goog-api-key"] == key, "the fake did receive the key"
    row = await one(db, "select error from imagen.jobs where id = $1", job_id)
    assert "Google rejected the request (400 INVALID_ARGUMENT)" in row["error"] and "***" in row["error"]
    everything = json.dumps([dict(r) for r in await db.fetch("select * from imagen.job_events")], default=str)
    assert key not in row["error"] and key not in everything
