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
from collections.abc import Awaitable, Callable
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


# Signed URLs of one object are the same within a window of this many seconds (see `url`).
URL_WINDOW = 300

# Owner folders and their objects are private to whoever owns them (ADR 0008); the store's root and
# bucket folders are only traversable, so a user reaches their own folder without listing others'.
DIR_MODE, FILE_MODE, SHARED_DIR_MODE = 0o700, 0o600, 0o711

# Maps an owner id (an object path's first segment) to the Unix uid that should own that owner's
# folder and objects, or None to leave them with the writer (a shared pool under JupyterHub hands
# each user's images to that user: imagen_worker.users.HubStoreOwners).
OwnerUids = Callable[[str], Awaitable[int | None]]


def _write_private(path: Path, data: bytes) -> None:
    """Write a new file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class LocalStorage(Storage):
    name = "local"

    def __init__(
        self,
        root: Path,
        *,
        bucket: str = "images",
        signing_key: bytes,
        url_prefix: str = "/imagen/files",
        owner_uids: OwnerUids | None = None,
    ) -> None:
        self.root = root
        self.bucket = bucket
        self._key = signing_key
        self.url_prefix = url_prefix.rstrip("/")
        self._owner_uids = owner_uids

    def _file(self, path: str) -> Path:
        if not path or path.startswith("/") or ".." in path.split("/") or "\\" in path:
            raise StorageRejected(f"object path {path!r} is not a relative path inside the bucket")
        return self.root / self.bucket / path

    async def put(self, path: str, data: bytes, content_type: str) -> StoredObject:
        target = self._file(path)
        uid = await self._owner_uids(path.split("/", 1)[0]) if self._owner_uids is not None else None
        await asyncio.to_thread(self._write, target, data, uid)
        return StoredObject(self.bucket, path, len(data))

    def _write(self, target: Path, data: bytes, uid: int | None = None) -> None:
        tmp = target.with_name(f"{_temp_prefix(target)}{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            self._folders(target.parent, uid)
            _write_private(tmp, data)
            if uid is not None:
                os.chown(tmp, uid, -1)
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

    def _folders(self, folder: Path, uid: int | None) -> None:
        """The folders down to `folder`: the store's root and bucket only traversable by others (0711),
        the owner's folders private (0700) and handed to `uid` where one is given."""
        bucket = self.root / self.bucket
        for shared in (self.root, bucket):
            if not shared.is_dir():
                shared.mkdir(parents=True, exist_ok=True)
                os.chmod(shared, SHARED_DIR_MODE)  # mkdir's own mode would be cut by the umask
        for directory in [d for d in reversed([folder, *folder.parents]) if bucket in d.parents]:
            try:
                directory.mkdir(mode=DIR_MODE)
            except FileExistsError:
                continue
            if uid is not None:
                os.chown(directory, uid, -1)

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
        """A signed URL valid for at least `expires_in` seconds. The expiry is rounded up to the next
        URL_WINDOW seconds, so the same image gets the same URL for a while and browsers reuse what they
        cached (a canvas reload then loads its thumbnails from the cache). A lifetime of zero or less
        is not rounded: such a URL is already expired."""
        expires_at = int(time.time()) + expires_in
        if expires_in > 0:
            expires_at = -(-expires_at // URL_WINDOW) * URL_WINDOW
        return f"{self.url_prefix}/{quote(self.bucket)}/{quote(path)}?expires={expires_at}&sig={self.sign(path, expires_at)}"

    def file_path(self, path: str) -> Path:
        return self._file(path)
