"""The local store: objects written atomically under the bucket folder (a killed write's temporary file
removed by the next write of its key), URLs signed with HMAC that verify, expire, refuse a tampered
signature, path or expiry (with a timing-safe compare), and no path that leaves the bucket."""

from __future__ import annotations

import errno
import hmac
import os
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from imagen_worker.errors import ConfigError, StorageRejected, StorageUnavailable
from imagen_worker.storage import LocalStorage, load_signing_key
from imagen_worker.storage import local as local_storage

pytestmark = pytest.mark.asyncio

KEY = b"unit-test-signing-key-0123456789"


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store", signing_key=KEY)


def parse(url: str) -> tuple[str, int, str]:
    """(object path, expires_at, signature) of a URL from LocalStorage.url()."""
    parts = urlsplit(url)
    prefix = "/imagen/files/images/"
    assert parts.path.startswith(prefix)
    query = parse_qs(parts.query)
    return unquote(parts.path.removeprefix(prefix)), int(query["expires"][0]), query["sig"][0]


async def test_put_then_get_round_trips_and_writes_under_the_bucket_folder(store: LocalStorage) -> None:
    stored = await store.put("owner/job.png", b"png bytes", "image/png")
    assert (stored.bucket, stored.path, stored.bytes) == ("images", "owner/job.png", 9)
    assert (store.root / "images" / "owner" / "job.png").read_bytes() == b"png bytes"
    assert await store.get("owner/job.png") == b"png bytes"
    assert [p.name for p in (store.root / "images" / "owner").iterdir()] == ["job.png"]  # no temp file left


async def test_put_replaces_and_delete_is_idempotent(store: LocalStorage) -> None:
    await store.put("o/k.png", b"one", "image/png")
    await store.put("o/k.png", b"two", "image/png")
    assert await store.get("o/k.png") == b"two"
    await store.delete("o/k.png")
    await store.delete("o/k.png")
    with pytest.raises(StorageRejected, match=r"no object 'o/k.png' in bucket 'images'"):
        await store.get("o/k.png")


async def test_a_full_disk_is_unavailable_and_leaves_no_partial_file(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_half_then_fail(path: Path, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local_storage, "_write_private", write_half_then_fail)
    with pytest.raises(
        StorageUnavailable, match=r"local store could not write job\.png: No space left on device"
    ) as err:
        await store.put("owner/job.png", b"png bytes", "image/png")
    assert err.value.retryable
    assert list((store.root / "images" / "owner").iterdir()) == []  # neither the object nor a temp file


async def test_the_next_write_of_a_key_removes_the_temporary_file_a_killed_write_left(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Killed(BaseException):
        """The process dying between writing the bytes and renaming them into place."""

    def killed(src: str, dst: str) -> None:
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(os, "replace", killed)
        with pytest.raises(Killed):
            await store.put("owner/job.png", b"first", "image/png")
    owner = store.root / "images" / "owner"
    [leftover] = [p.name for p in owner.iterdir()]
    assert leftover.endswith(".tmp") and leftover != "job.png"
    await store.put("owner/job.thumb.webp", b"thumb", "image/webp")  # another key's write leaves it alone
    assert sorted(p.name for p in owner.iterdir()) == sorted([leftover, "job.thumb.webp"])
    await store.put("owner/job.png", b"second", "image/png")
    assert sorted(p.name for p in owner.iterdir()) == ["job.png", "job.thumb.webp"]
    assert await store.get("owner/job.png") == b"second"


async def test_a_folder_the_store_cannot_write_is_refused_with_the_fix(store: LocalStorage) -> None:
    (store.root / "images").mkdir(parents=True)
    (store.root / "images" / "owner").write_bytes(b"a file where the owner's folder should be")
    with pytest.raises(StorageRejected, match="check that IMAGEN_DATA_DIR is a folder the worker can write") as err:
        await store.put("owner/job.png", b"png bytes", "image/png")
    assert not err.value.retryable


async def test_a_signed_url_verifies_until_it_expires(store: LocalStorage) -> None:
    before = int(time.time())
    url = await store.url("owner/job 1.png", expires_in=60)
    path, expires_at, sig = parse(url)
    assert path == "owner/job 1.png"
    assert before + 60 <= expires_at <= int(time.time()) + 60 + local_storage.URL_WINDOW
    assert store.verify(path, expires_at, sig)
    assert store.verify(path, expires_at, sig, now=expires_at)
    assert not store.verify(path, expires_at, sig, now=expires_at + 1)


async def test_an_already_expired_url_is_refused(store: LocalStorage) -> None:
    path, expires_at, sig = parse(await store.url("o/k.png", expires_in=-1))
    assert not store.verify(path, expires_at, sig)


async def test_a_tampered_signature_path_or_expiry_is_refused(store: LocalStorage) -> None:
    path, expires_at, sig = parse(await store.url("owner/job.png"))
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert not store.verify(path, expires_at, flipped)
    assert not store.verify(path, expires_at, sig[:-1])
    assert not store.verify(path, expires_at, "")
    assert not store.verify(path, expires_at, sig.upper())
    assert not store.verify("owner/other.png", expires_at, sig)
    assert not store.verify("other-owner/job.png", expires_at, sig)
    assert not store.verify(path, expires_at + 3600, sig)  # a later expiry needs a new signature


async def test_another_key_or_bucket_does_not_accept_the_signature(store: LocalStorage) -> None:
    path, expires_at, sig = parse(await store.url("owner/job.png"))
    other_key = LocalStorage(store.root, signing_key=b"a-different-signing-key-987654")
    other_bucket = LocalStorage(store.root, bucket="thumbs", signing_key=KEY)
    assert not other_key.verify(path, expires_at, sig)
    assert not other_bucket.verify(path, expires_at, sig)


async def test_verification_compares_signatures_in_constant_time(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    compare_digest = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return compare_digest(a, b)

    path, expires_at, sig = parse(await store.url("owner/job.png"))
    monkeypatch.setattr("imagen_worker.storage.local.hmac.compare_digest", spy)
    assert store.verify(path, expires_at, sig)
    assert not store.verify(path, expires_at, "f" * 64)
    assert [b for _, b in calls] == [sig, "f" * 64]


@pytest.mark.parametrize(
    "path",
    [
        "../escape.png",
        "owner/../../escape.png",
        "owner/..",
        "/etc/passwd",
        "owner\\..\\escape.png",
        "",
    ],
)
async def test_paths_that_leave_the_bucket_are_refused(store: LocalStorage, tmp_path: Path, path: str) -> None:
    with pytest.raises(StorageRejected, match="is not a relative path inside the bucket"):
        await store.put(path, b"x", "image/png")
    with pytest.raises(StorageRejected, match="is not a relative path inside the bucket"):
        await store.get(path)
    with pytest.raises(StorageRejected, match="is not a relative path inside the bucket"):
        await store.delete(path)
    assert not (tmp_path / "escape.png").exists()
    assert not (store.root / "escape.png").exists()


async def test_signing_key_from_the_environment_must_be_long(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGEN_URL_SIGNING_KEY", "short")
    with pytest.raises(ConfigError, match="IMAGEN_URL_SIGNING_KEY is shorter than 16 characters"):
        load_signing_key(tmp_path)
    monkeypatch.setenv("IMAGEN_URL_SIGNING_KEY", "x" * 32)
    assert load_signing_key(tmp_path) == b"x" * 32


async def test_a_generated_signing_key_is_kept_private_and_reused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("IMAGEN_URL_SIGNING_KEY", raising=False)
    first = load_signing_key(tmp_path / "data")
    assert len(first) >= 32
    assert (tmp_path / "data" / "url-signing.key").stat().st_mode & 0o777 == 0o600
    assert load_signing_key(tmp_path / "data") == first


async def test_objects_are_private_to_their_owner_and_the_store_only_traversable(store: LocalStorage) -> None:
    await store.put("owner-a/job.png", b"png bytes", "image/png")
    assert (store.root.stat().st_mode & 0o777) == 0o711
    assert ((store.root / "images").stat().st_mode & 0o777) == 0o711
    assert ((store.root / "images" / "owner-a").stat().st_mode & 0o777) == 0o700
    assert ((store.root / "images" / "owner-a" / "job.png").stat().st_mode & 0o777) == 0o600


async def test_a_pool_hands_each_owners_folder_and_objects_to_that_owners_uid(tmp_path: Path) -> None:
    import os

    asked: list[str] = []

    async def uid_of(owner: str) -> int | None:
        asked.append(owner)
        return os.getuid()  # the only uid a test can chown to without privileges

    store = LocalStorage(tmp_path / "store", signing_key=b"k" * 20, owner_uids=uid_of)
    await store.put("owner-b/sub/job.png", b"png bytes", "image/png")
    assert asked == ["owner-b"]
    target = tmp_path / "store" / "images" / "owner-b" / "sub" / "job.png"
    assert target.stat().st_uid == os.getuid() and (target.stat().st_mode & 0o777) == 0o600


async def test_an_objects_url_is_the_same_within_a_window_and_valid_at_least_as_long_as_asked(
    store: LocalStorage,
) -> None:
    first, again = await store.url("owner/job.png", expires_in=3600), await store.url("owner/job.png", expires_in=3600)
    assert first == again  # a browser's cached thumbnail is reused
    expires = int(parse_qs(urlsplit(first).query)["expires"][0])
    assert expires % local_storage.URL_WINDOW == 0
    assert time.time() + 3600 <= expires < time.time() + 3600 + local_storage.URL_WINDOW + 1
