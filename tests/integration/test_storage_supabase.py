"""Supabase Storage through the real storage3 client against a fake Storage server, alone and under a
whole job: upload with upsert, download, public and signed URLs, delete, failures as StorageRejected or StorageUnavailable,
and a job from INSERT to done (or to failed, when storage keeps failing)."""

from __future__ import annotations

import hashlib
import io
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from PIL import Image

from imagen_worker.config import Settings
from imagen_worker.errors import ConfigError, StorageRejected, StorageUnavailable
from imagen_worker.pipeline import ImagePipeline
from imagen_worker.providers import ProviderRegistry
from imagen_worker.providers.local import LocalProvider
from imagen_worker.queue import WorkerConfig
from imagen_worker.storage import storage_from_settings
from imagen_worker.storage.supabase import SupabaseStorage

from ..fakes.supabase_storage import FakeSupabaseStorage, api_key
from ..helpers import running_worker, wait_for_status

pytestmark = pytest.mark.asyncio

PNG = b"\x89PNG\r\n\x1a\n" + b"pretend image bytes"


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeSupabaseStorage]:
    async with FakeSupabaseStorage() as server:
        server.create_bucket("images")
        server.create_bucket("public-images", public=True)
        yield server


@pytest_asyncio.fixture
async def storage(fake: FakeSupabaseStorage) -> AsyncIterator[SupabaseStorage]:
    backend = SupabaseStorage(fake.url, fake.service_role_key, "images", public=False)
    yield backend
    await backend.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the backend ---------------------------------------------------------------------------------


async def test_put_uploads_with_content_type_upsert_and_both_auth_headers(
    fake: FakeSupabaseStorage, storage: SupabaseStorage
) -> None:
    stored = await storage.put("owner/job.png", PNG, "image/png")
    assert (stored.bucket, stored.path, stored.bytes) == ("images", "owner/job.png", len(PNG))
    obj = fake.stored("images", "owner/job.png")
    assert obj is not None and obj.data == PNG and obj.content_type == "image/png"
    upload = fake.uploads()[-1]
    assert upload.path == "/storage/v1/object/images/owner/job.png"
    assert upload.headers["x-upsert"] == "true"
    assert upload.headers["apikey"] == fake.service_role_key
    assert upload.headers["Authorization"] == f"Bearer {fake.service_role_key}"


async def test_put_replaces_an_existing_object_so_a_retried_job_can_rewrite_its_key(
    fake: FakeSupabaseStorage, storage: SupabaseStorage
) -> None:
    await storage.put("owner/job.png", b"first", "image/png")
    await storage.put("owner/job.png", b"second", "image/webp")
    obj = fake.stored("images", "owner/job.png")
    assert obj is not None and (obj.data, obj.content_type) == (b"second", "image/webp")
    assert [u.status for u in fake.uploads()] == [200, 200]


async def test_fake_refuses_an_overwrite_without_upsert_as_storage_does(fake: FakeSupabaseStorage) -> None:
    # The real client without upsert gets Storage's 409 Duplicate: what `put` avoids with x-upsert.
    from storage3 import AsyncStorageClient
    from storage3.exceptions import StorageApiError

    headers = {"apikey": fake.service_role_key, "Authorization": f"Bearer {fake.service_role_key}"}
    async with AsyncStorageClient(f"{fake.url}/storage/v1/", headers) as client:
        await client.from_("images").upload("a.png", b"one", {"content-type": "image/png"})
        with pytest.raises(StorageApiError) as err:
            await client.from_("images").upload("a.png", b"two", {"content-type": "image/png"})
    assert (str(err.value.status), err.value.code, err.value.message) == (
        "409",
        "Duplicate",
        "The resource already exists",
    )


async def test_get_returns_the_stored_bytes_and_a_missing_object_is_a_storage_error(
    storage: SupabaseStorage,
) -> None:
    await storage.put("owner/job.png", PNG, "image/png")
    assert await storage.get("owner/job.png") == PNG
    with pytest.raises(StorageRejected, match=r"no object 'owner/missing.png' in Supabase Storage bucket 'images'"):
        await storage.get("owner/missing.png")


async def test_signed_url_serves_the_object_without_keys_until_it_expires(
    fake: FakeSupabaseStorage, storage: SupabaseStorage
) -> None:
    await storage.put("owner/job.png", PNG, "image/png")
    url = await storage.url("owner/job.png", expires_in=60)
    assert url.startswith(f"{fake.url}/storage/v1/object/sign/images/owner/job.png?token=")
    assert fake.service_role_key not in url
    async with httpx.AsyncClient() as http:
        ok = await http.get(url)
        assert ok.status_code == 200 and ok.content == PNG and ok.headers["content-type"] == "image/png"
        fake.advance(61)
        expired = await http.get(url)
    assert expired.status_code == 400 and expired.json()["message"] == "jwt expired"


async def test_signed_url_for_a_missing_object_is_a_storage_error(storage: SupabaseStorage) -> None:
    with pytest.raises(StorageRejected, match=r"could not sign a URL for 'owner/none.png'.*404 not_found"):
        await storage.url("owner/none.png")


async def test_public_bucket_gets_the_public_route_which_serves_without_keys(fake: FakeSupabaseStorage) -> None:
    backend = SupabaseStorage(fake.url, fake.service_role_key, "public-images", public=True)
    try:
        await backend.put("owner/job.webp", b"RIFF....WEBP", "image/webp")
        url = await backend.url("owner/job.webp")
    finally:
        await backend.aclose()
    assert url == f"{fake.url}/storage/v1/object/public/public-images/owner/job.webp"
    async with httpx.AsyncClient() as http:
        got = await http.get(url)
    assert got.status_code == 200 and got.content == b"RIFF....WEBP"
    assert not any(r.path.startswith("/storage/v1/object/sign/") for r in fake.requests)


async def test_delete_removes_the_object_and_deleting_a_missing_one_is_fine(
    fake: FakeSupabaseStorage, storage: SupabaseStorage
) -> None:
    await storage.put("owner/job.png", PNG, "image/png")
    await storage.delete("owner/job.png")
    assert fake.stored("images", "owner/job.png") is None
    await storage.delete("owner/job.png")
    deletes = [r for r in fake.requests if r.method == "DELETE"]
    assert [(r.path, r.status) for r in deletes] == [("/storage/v1/object/images", 200)] * 2


@pytest.mark.parametrize("path", ["", "/abs.png", "a/../b.png", "./a.png", "a\\b.png", "a//b.png"])
async def test_paths_outside_the_bucket_are_refused_before_any_request(
    fake: FakeSupabaseStorage, storage: SupabaseStorage, path: str
) -> None:
    with pytest.raises(StorageRejected, match="not a relative path inside the bucket"):
        await storage.put(path, PNG, "image/png")
    assert fake.requests == []


async def test_a_wrong_key_fails_as_storage_error_without_showing_the_key(fake: FakeSupabaseStorage) -> None:
    wrong = api_key("service_role", secret="another-projects-secret-another-projects-secret")
    backend = SupabaseStorage(fake.url, wrong, "images")
    try:
        with pytest.raises(StorageRejected) as err:
            await backend.put("owner/job.png", PNG, "image/png")
    finally:
        await backend.aclose()
    assert not err.value.retryable  # a retry with the same key cannot help
    message = str(err.value)
    assert message.startswith("Supabase Storage could not upload 'owner/job.png' in bucket 'images': ")
    assert "Invalid API key" in message
    assert wrong not in message and wrong not in repr(backend)


async def test_an_anon_key_is_refused_by_row_level_security(fake: FakeSupabaseStorage) -> None:
    backend = SupabaseStorage(fake.url, fake.anon_key, "images")
    try:
        with pytest.raises(StorageRejected, match="403 Unauthorized: new row violates row-level security policy"):
            await backend.put("owner/job.png", PNG, "image/png")
    finally:
        await backend.aclose()


async def test_a_missing_bucket_names_the_bucket(fake: FakeSupabaseStorage) -> None:
    backend = SupabaseStorage(fake.url, fake.service_role_key, "nope")
    try:
        with pytest.raises(StorageRejected, match=r"in bucket 'nope': 404 Bucket not found: Bucket not found"):
            await backend.put("owner/job.png", PNG, "image/png")
    finally:
        await backend.aclose()


async def test_a_5xx_is_a_retryable_storage_error(fake: FakeSupabaseStorage, storage: SupabaseStorage) -> None:
    fake.fail_uploads(1)
    with pytest.raises(StorageUnavailable, match="503 internal: Service temporarily unavailable") as err:
        await storage.put("owner/job.png", PNG, "image/png")
    assert err.value.retryable
    await storage.put("owner/job.png", PNG, "image/png")
    assert [u.status for u in fake.uploads()] == [503, 200]


async def test_an_unreachable_server_is_a_storage_error_naming_the_host() -> None:
    port = _free_port()
    key = api_key("service_role")
    backend = SupabaseStorage(f"http://127.0.0.1:{port}", key, "images", timeout=5)
    try:
        with pytest.raises(
            StorageUnavailable, match=rf"could not upload 'a.png' .*cannot reach 127.0.0.1:{port}"
        ) as err:
            await backend.put("a.png", PNG, "image/png")
    finally:
        await backend.aclose()
    assert key not in str(err.value)


# -- configuration -------------------------------------------------------------------------------


async def test_settings_build_a_supabase_backend(fake: FakeSupabaseStorage) -> None:
    env = {
        "IMAGEN_STORAGE": "supabase",
        "SUPABASE_URL": fake.url + "/",
        "SUPABASE_SERVICE_ROLE_KEY": fake.service_role_key,
        "IMAGEN_BUCKET": "public-images",
        "IMAGEN_BUCKET_PUBLIC": "true",
    }
    settings = Settings.from_env(env)
    assert fake.service_role_key not in repr(settings)
    backend = storage_from_settings(settings)
    assert isinstance(backend, SupabaseStorage)
    try:
        assert (backend.bucket, backend.public) == ("public-images", True)
        await backend.put("o/k.png", PNG, "image/png")
        assert fake.stored("public-images", "o/k.png") is not None
    finally:
        await backend.aclose()


async def test_bucket_defaults_to_images_and_private() -> None:
    settings = Settings.from_env(
        {"IMAGEN_STORAGE": "supabase", "SUPABASE_URL": "https://x.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": "k" * 40}
    )
    assert (settings.bucket, settings.bucket_public) == ("images", False)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SUPABASE_SERVICE_ROLE_KEY": "k" * 40}, "SUPABASE_URL"),
        ({"SUPABASE_URL": "https://x.supabase.co"}, "SUPABASE_SERVICE_ROLE_KEY"),
        ({"SUPABASE_URL": "https://x.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": ""}, "SUPABASE_SERVICE_ROLE_KEY"),
        ({"SUPABASE_URL": "x.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": "k" * 40}, "SUPABASE_URL"),
        (
            {
                "SUPABASE_URL": "https://x.supabase.co",
                "SUPABASE_SERVICE_ROLE_KEY": "k" * 40,
                "IMAGEN_BUCKET_PUBLIC": "maybe",
            },
            "IMAGEN_BUCKET_PUBLIC",
        ),
    ],
)
async def test_supabase_storage_without_its_settings_names_the_missing_variable(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({"IMAGEN_STORAGE": "supabase", **env})


async def test_settings_built_directly_without_a_key_are_refused_by_the_factory() -> None:
    with pytest.raises(ConfigError, match="SUPABASE_SERVICE_ROLE_KEY"):
        storage_from_settings(Settings(storage="supabase", supabase_url="https://x.supabase.co"))


# -- a whole job ---------------------------------------------------------------------------------

FAST_RETRY = WorkerConfig(concurrency=2, poll_interval=0.5, retry_base_seconds=0.05, retry_cap_seconds=0.2)


async def _insert_job(db: asyncpg.Connection, owner: uuid.UUID, max_attempts: int = 3) -> uuid.UUID:
    job_id = await db.fetchval(
        """insert into imagen.jobs (owner_user_id, provider, model, prompt, spec, max_attempts)
           values ($1, 'local', 'local-v1', 'a lighthouse at dusk', $2, $3) returning id""",
        owner,
        {"seed": 7, "size": "512x384"},
        max_attempts,
    )
    assert isinstance(job_id, uuid.UUID)
    return job_id


def _pipeline(fake: FakeSupabaseStorage, key: str | None = None) -> ImagePipeline:
    return ImagePipeline(
        SupabaseStorage(fake.url, key or fake.service_role_key, "images"), ProviderRegistry({"local": LocalProvider})
    )


async def _run_to_failure(
    db_url: str, db: asyncpg.Connection, fake: FakeSupabaseStorage, *, max_attempts: int, key: str | None = None
) -> tuple[uuid.UUID, uuid.UUID, dict[str, Any]]:
    """Run one job through a worker on the fake until it fails: (owner, job id, job row)."""
    owner = uuid.uuid4()
    pipeline = _pipeline(fake, key)
    async with running_worker(db_url, pipeline, FAST_RETRY):
        job_id = await _insert_job(db, owner, max_attempts=max_attempts)
        assert await wait_for_status(db, [job_id], timeout=30) == {job_id: "failed"}
    assert isinstance(pipeline.storage, SupabaseStorage)
    await pipeline.storage.aclose()
    job = await _job(db, job_id)
    assert job["image_id"] is None
    return owner, job_id, job


async def _job(db: asyncpg.Connection, job_id: uuid.UUID) -> dict[str, Any]:
    row = await db.fetchrow("select status, attempts, error, image_id from imagen.jobs where id = $1", job_id)
    assert row is not None
    return dict(row)


async def test_a_job_lands_image_and_thumbnail_in_the_bucket_with_an_images_row(
    db_url: str, db: asyncpg.Connection, fake: FakeSupabaseStorage
) -> None:
    owner = uuid.uuid4()
    pipeline = _pipeline(fake)
    async with running_worker(db_url, pipeline, FAST_RETRY):
        job_id = await _insert_job(db, owner)
        assert await wait_for_status(db, [job_id]) == {job_id: "done"}
    assert isinstance(pipeline.storage, SupabaseStorage)
    await pipeline.storage.aclose()

    job = await _job(db, job_id)
    assert (job["attempts"], job["error"]) == (1, None)
    image = await db.fetchrow("select * from imagen.images where job_id = $1", job_id)
    assert image is not None and image["id"] == job["image_id"]
    assert (image["bucket"], image["path"], image["thumb_path"]) == (
        "images",
        f"{owner}/{job_id}.png",
        f"{owner}/{job_id}.thumb.webp",
    )
    assert (image["content_type"], image["width"], image["height"], image["owner_user_id"]) == (
        "image/png",
        512,
        384,
        owner,
    )
    stored = fake.stored("images", image["path"])
    assert stored is not None and stored.content_type == "image/png"
    assert len(stored.data) == image["bytes"] and hashlib.sha256(stored.data).hexdigest() == image["sha256"]
    thumb = fake.stored("images", image["thumb_path"])
    assert thumb is not None and thumb.content_type == "image/webp"
    with Image.open(io.BytesIO(thumb.data)) as t:
        assert t.format == "WEBP" and t.size == (256, 192)


async def test_storage_failing_twice_then_succeeding_completes_within_one_attempt(
    db_url: str, db: asyncpg.Connection, fake: FakeSupabaseStorage
) -> None:
    fake.fail_uploads(2)
    pipeline = _pipeline(fake)
    async with running_worker(db_url, pipeline, FAST_RETRY):
        job_id = await _insert_job(db, uuid.uuid4())
        assert await wait_for_status(db, [job_id]) == {job_id: "done"}
    assert isinstance(pipeline.storage, SupabaseStorage)
    await pipeline.storage.aclose()

    job = await _job(db, job_id)
    assert (job["attempts"], job["error"]) == (1, None)  # the retries were the upload's own
    assert [u.status for u in fake.uploads()] == [503, 503, 200, 200]
    assert await db.fetchval("select count(*) from imagen.images where job_id = $1", job_id) == 1


async def test_storage_that_keeps_failing_retries_then_fails_the_job_with_no_images_row(
    db_url: str, db: asyncpg.Connection, fake: FakeSupabaseStorage
) -> None:
    fake.fail_uploads(1000)
    owner, job_id, job = await _run_to_failure(db_url, db, fake, max_attempts=2)
    assert job["attempts"] == 2
    assert job["error"] == (
        f"Supabase Storage could not upload '{owner}/{job_id}.png' in bucket 'images': "
        "503 internal: Service temporarily unavailable"
    )
    assert fake.service_role_key not in job["error"]
    # Each attempt tried the upload three times; the first attempt's failure sent the job back to pending.
    assert [u.status for u in fake.uploads()] == [503] * 6
    states = await db.fetch(
        "select payload from imagen.job_events where job_id = $1 and kind = 'state' order by id", job_id
    )
    assert [s["payload"]["status"] for s in states] == ["running", "pending", "running", "failed"]
    assert await db.fetchval("select count(*) from imagen.images") == 0
    assert fake.buckets["images"].objects == {}


async def test_storage_that_refuses_the_key_fails_the_job_at_once_after_one_upload(
    db_url: str, db: asyncpg.Connection, fake: FakeSupabaseStorage
) -> None:
    """A refusal (here the project's anon key, which Storage's row-level security turns away) is not
    retried: not by the upload's own retries, not by the job's attempts."""
    owner, job_id, job = await _run_to_failure(db_url, db, fake, max_attempts=3, key=fake.anon_key)
    assert job["attempts"] == 1
    assert job["error"] == (
        f"Supabase Storage could not upload '{owner}/{job_id}.png' in bucket 'images': "
        "403 Unauthorized: new row violates row-level security policy"
    )
    assert [u.status for u in fake.uploads()] == [400]
