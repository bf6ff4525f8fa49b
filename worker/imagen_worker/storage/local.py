"""The local store: a folder on disk, objects written atomically, read back through expiring HMAC-signed URLs.

An object is written to a temporary file beside it and renamed into place; what a writer killed in between
leaves behind is removed by the next write of the same key.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote

from ..errors import ConfigError, StorageRejected, StorageUnavailable
from .base import Storage, StoredObject


def load_signing_key(data_dir: Path) -> bytes:
    """IMAGEN_URL_SIGNING_KEY, else a random key kept in data_dir (created once, mode 600)."""
    env = os.environ.get("IMAGEN_URL_SIGNING_KEY")
    if env:
        if len(env) < 16:
            raise ConfigError("IMAGEN_URL_SIGNING_KEY is shorter than 16 characters; use a long random string")
        return env.encode()
    path = data_dir / "url-signing.key"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip().encode()


# Write failures that can pass on their own; any other (permissions, a read-only or misshapen folder)
# needs a fix, so the job fails at once with the reason.
_TRANSIENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EINTR, errno.ENOMEM, errno.EBUSY}
)


def _temp_prefix(target: Path) -> str:
    """How the temporary files of writes of `target` begin (they sit beside it, so the rename stays
    on one filesystem)."""
    return f".{target.name}."


def _remove_leftovers(target: Path) -> None:
    """Remove the temporary files of earlier writes of `target` whose process died between writing
    and renaming (a SIGKILL, a power cut). Keys are deterministic, so the write that replaces a
    crashed one is the one that cleans up after it. The cost is one listing of the folder (about
    5 ms for 10,000 objects). A concurrent writer of the same key, which only a worker that lost
    the job's lease can be, loses its rename."""
    prefix = _temp_prefix(target)
    try:
        with os.scandir(target.parent) as entries:
            leftovers = [e.path for e in entries if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:
        return
    for path in leftovers:
        with contextlib.suppress(OSError):
            os.unlink(path)


class LocalStorage(Storage):
    name = "local"

    def __init__(
        self, root: Path, *, bucket: str = "images", signing_key: bytes, url_prefix: str = "/imagen/files"
    ) -> None:
        self.root = root
        self.bucket = bucket
        self._key = signing_key
        self.url_prefix = url_prefix.rstrip("/")

    def _file(self, path: str) -> Path:
        if not path or path.startswith("/") or ".." in path.split("/") or "\\" in path:
            raise StorageRejected(f"object path {path!r} is not a relative path inside the bucket")
        return self.root / self.bucket / path

    async def put(self, path: str, data: bytes, content_type: str) -> StoredObject:
        target = self._file(path)
        await asyncio.to_thread(self._write, target, data)
        return StoredObject(self.bucket, path, len(data))

    @staticmethod
    def _write(target: Path, data: bytes) -> None:
        tmp = target.with_name(f"{_temp_prefix(target)}{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            message = f"local store could not write {target.name}: {exc.strerror or exc}"
            if exc.errno in _TRANSIENT_ERRNOS:
                raise StorageUnavailable(message) from exc  # a full disk, an I/O error: may pass
            # No permission, a read-only or misshapen folder: a setting to fix, not a moment to wait.
            raise StorageRejected(f"{message}; check that IMAGEN_DATA_DIR is a folder the worker can write") from exc
        _remove_leftovers(target)

    async def get(self, path: str) -> bytes:
        target = self._file(path)
        try:
            return await asyncio.to_thread(target.read_bytes)
        except FileNotFoundError:
            raise StorageRejected(f"no object {path!r} in bucket {self.bucket!r}") from None

    async def delete(self, path: str) -> None:
        target = self._file(path)
        await asyncio.to_thread(target.unlink, True)

    def sign(self, path: str, expires_at: int) -> str:
        message = f"{self.bucket}/{path}:{expires_at}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def verify(self, path: str, expires_at: int, signature: str, *, now: float | None = None) -> bool:
        """True when `signature` is this store's for `path` and has not expired (timing-safe)."""
        if expires_at < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(self.sign(path, expires_at), signature)

    async def url(self, path: str, *, expires_in: int = 3600) -> str:
        expires_at = int(time.time()) + expires_in
        return f"{self.url_prefix}/{quote(self.bucket)}/{quote(path)}?expires={expires_at}&sig={self.sign(path, expires_at)}"

    def file_path(self, path: str) -> Path:
        return self._file(path)
