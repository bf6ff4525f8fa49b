"""The storage interface every backend implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    path: str
    bytes: int


class Storage(abc.ABC):
    """A bucket of objects under deterministic keys. Implementations raise StorageRejected when the
    request was refused (a retry cannot help) and StorageUnavailable when the store could not answer."""

    name: str
    bucket: str

    @abc.abstractmethod
    async def put(self, path: str, data: bytes, content_type: str) -> StoredObject:
        """Store `data` at `path`, replacing what was there (a retried job writes the same key)."""

    @abc.abstractmethod
    async def get(self, path: str) -> bytes:
        """The bytes at `path`; StorageRejected if missing."""

    @abc.abstractmethod
    async def delete(self, path: str) -> None:
        """Remove `path` if present."""

    async def aclose(self) -> None:  # noqa: B027 - optional: backends holding HTTP clients close them
        """Release network clients; called once when the worker stops."""

    @abc.abstractmethod
    async def url(self, path: str, *, expires_in: int = 3600) -> str:
        """A URL a browser can fetch: public, or signed to expire after `expires_in` seconds."""
