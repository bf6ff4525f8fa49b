"""Supabase Storage through storage3's async client: upserted uploads, public or signed URLs."""

from __future__ import annotations

from typing import NoReturn
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError
from storage3 import AsyncStorageClient
from storage3.utils import StorageException

from ..errors import StorageError, StorageRejected, StorageUnavailable
from .base import Storage, StoredObject

# Objects live at deterministic keys that a retried job overwrites, so caches may keep them a while.
CACHE_CONTROL_SECONDS = 3600
_DETAIL_LIMIT = 300


class SupabaseStorage(Storage):
    """A Supabase Storage bucket, written with the project's service_role key.

    Uploads and downloads go through storage3's AsyncStorageClient on one shared HTTP client, so
    they never block the event loop. `url()` is the public URL in a public bucket, otherwise a URL
    signed by Supabase that expires after `expires_in` seconds.
    """

    name = "supabase"

    def __init__(
        self,
        url: str,
        service_role_key: str,
        bucket: str = "images",
        public: bool = False,
        *,
        timeout: float = 30.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"Supabase URL {url!r} is not an http(s) URL")
        if not service_role_key:
            raise ValueError("the Supabase service_role key is empty")
        self.project_url = url.rstrip("/")
        self.bucket = bucket
        self.public = public
        self._key = service_role_key
        self._host = urlsplit(self.project_url).netloc
        # The same headers supabase-py's client sends: the gateway wants `apikey`, Storage the bearer JWT.
        headers = {"apikey": service_role_key, "Authorization": f"Bearer {service_role_key}"}
        self._http = http_client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)), follow_redirects=True, http2=True
        )
        self._client = AsyncStorageClient(f"{self.project_url}/storage/v1/", headers, http_client=self._http)

    def __repr__(self) -> str:
        return f"SupabaseStorage(url={self.project_url!r}, bucket={self.bucket!r}, public={self.public})"

    async def aclose(self) -> None:
        """Close the HTTP client (its connections)."""
        await self._http.aclose()

    async def put(self, path: str, data: bytes, content_type: str) -> StoredObject:
        _check(path)
        try:
            await self._client.from_(self.bucket).upload(
                path,
                data,
                {"content-type": content_type, "cache-control": str(CACHE_CONTROL_SECONDS), "upsert": "true"},
            )
        except Exception as exc:
            self._raise("upload", path, exc)
        return StoredObject(self.bucket, path, len(data))

    async def get(self, path: str) -> bytes:
        _check(path)
        try:
            return await self._client.from_(self.bucket).download(path)
        except Exception as exc:
            if isinstance(exc, StorageException) and _status(exc) == "404":
                raise StorageRejected(f"no object {path!r} in Supabase Storage bucket {self.bucket!r}") from None
            self._raise("download", path, exc)

    async def delete(self, path: str) -> None:
        _check(path)
        try:
            # Removing a missing object is not an error: Storage answers with the (empty) list it removed.
            await self._client.from_(self.bucket).remove([path])
        except Exception as exc:
            self._raise("delete", path, exc)

    async def url(self, path: str, *, expires_in: int = 3600) -> str:
        _check(path)
        bucket = self._client.from_(self.bucket)
        try:
            if self.public:
                return await bucket.get_public_url(path)
            signed = await bucket.create_signed_url(path, expires_in)
        except Exception as exc:
            self._raise("sign a URL for", path, exc)
        url = signed["signedURL"]
        if not url:
            raise StorageUnavailable(f"Supabase Storage returned no signed URL for {path!r} in bucket {self.bucket!r}")
        return url

    def _raise(self, action: str, path: str, exc: Exception) -> NoReturn:
        """Re-raise a client failure as StorageError naming what failed, never the key or a signed token."""
        if isinstance(exc, StorageError):
            raise exc
        what = f"Supabase Storage could not {action} {path!r} in bucket {self.bucket!r}"
        if isinstance(exc, StorageException):
            detail = f"{_status(exc) or 'error'} {getattr(exc, 'code', '')}: {getattr(exc, 'message', exc)}"
        elif isinstance(exc, httpx.TimeoutException):
            detail = f"no answer from {self._host} in time ({type(exc).__name__})"
        elif isinstance(exc, httpx.HTTPError):
            detail = f"cannot reach {self._host} ({type(exc).__name__}: {exc})"
        elif isinstance(exc, ValidationError | KeyError | ValueError | TypeError):
            detail = f"unexpected answer from {self._host} ({type(exc).__name__})"
        else:
            raise exc
        detail = " ".join(detail.replace(self._key, "***").split())
        if len(detail) > _DETAIL_LIMIT:
            detail = detail[: _DETAIL_LIMIT - 1] + "…"
        kind = StorageRejected if isinstance(exc, StorageException) and _refused(exc) else StorageUnavailable
        raise kind(f"{what}: {detail}") from exc


def _check(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise StorageRejected(f"object path {path!r} is not a relative path inside the bucket")


def _status(exc: StorageException) -> str:
    return str(getattr(exc, "status", "") or "")


def _refused(exc: StorageException) -> bool:
    """A 4xx other than 408 and 429: the request itself was refused (key, policy, bucket, size)."""
    status = _status(exc)
    return status.isdigit() and 400 <= int(status) < 500 and int(status) not in (408, 429)
