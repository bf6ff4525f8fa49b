"""One way to a database: the configured URL, or the embedded server when none is set."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from .config import Settings
from .embedded import embedded_database_url
from .errors import DatabaseError
from .migrate import migrate
from .redact import redact

# URLs this process has migrated. No process-level lock: `migrate` takes a database advisory lock,
# so concurrent first calls are safe (and an asyncio lock would tie this module to one event loop).
_migrated: set[str] = set()


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection setup: json and jsonb as Python objects."""
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def resolve_database_url(url: str | None = None, settings: Settings | None = None) -> str:
    """The URL to use: the argument, else IMAGEN_DATABASE_URL, else the embedded server's."""
    if url:
        return url
    settings = settings or Settings.from_env()
    if settings.database_url:
        return settings.database_url
    return embedded_database_url(settings.data_dir)


async def _ensure_migrated(url: str) -> None:
    if url in _migrated:
        return
    conn = await _open(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    _migrated.add(url)


async def _open(url: str, **kwargs: Any) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, **kwargs)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to the database ({redact(url)}): {exc}") from exc


async def connect(
    url: str | None = None, *, settings: Settings | None = None, migrate: bool = True, **kwargs: Any
) -> asyncpg.Connection:
    """A connection to the imagen database, migrated to the current schema unless `migrate=False`."""
    resolved = resolve_database_url(url, settings)
    if migrate:
        await _ensure_migrated(resolved)
    conn = await _open(resolved, **kwargs)
    await init_connection(conn)
    return conn


async def create_pool(
    url: str | None = None,
    *,
    settings: Settings | None = None,
    migrate: bool = True,
    min_size: int = 1,
    max_size: int = 10,
    **kwargs: Any,
) -> asyncpg.Pool:
    """A pool on the imagen database, migrated unless `migrate=False`."""
    resolved = resolve_database_url(url, settings)
    if migrate:
        await _ensure_migrated(resolved)
    try:
        pool = await asyncpg.create_pool(resolved, min_size=min_size, max_size=max_size, init=init_connection, **kwargs)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to the database ({redact(resolved)}): {exc}") from exc
    assert pool is not None
    return pool
