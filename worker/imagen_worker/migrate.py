"""The migration runner: numbered plain-SQL files applied in order, once each, under an advisory lock."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from .errors import MigrationError

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# One fixed key for every imagen migrate run, so concurrent runs queue instead of colliding.
_LOCK_KEY = 7_231_947_160_114_522_001

_BOOKKEEPING = """
create schema if not exists imagen;
create table if not exists imagen.schema_migrations (
  version     integer primary key,
  name        text not null,
  checksum    text not null,
  applied_at  timestamptz not null default now()
);
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def load_migrations() -> list[Migration]:
    """The migration files shipped in imagen_worker/migrations, in version order."""
    found: list[Migration] = []
    for entry in resources.files("imagen_worker.migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


@dataclass(frozen=True)
class MigrateResult:
    applied: list[str]
    already: list[str]


async def _recorded(conn: asyncpg.Connection, migrations: list[Migration]) -> dict[int, tuple[str, str]] | None:
    """The applied migrations, checked against the files (None: no bookkeeping table yet)."""
    if not await conn.fetchval("select to_regclass('imagen.schema_migrations') is not null"):
        return None
    rows = await conn.fetch("select version, name, checksum from imagen.schema_migrations")
    recorded = {r["version"]: (r["name"], r["checksum"]) for r in rows}
    for m in migrations:
        if m.version in recorded and recorded[m.version][1] != m.checksum:
            raise MigrationError(
                f"migration {m.filename} was changed after it was applied (checksum differs from the "
                "database's record); restore the file and add a new numbered migration for the change"
            )
    unknown = sorted(set(recorded) - {m.version for m in migrations})
    if unknown:
        raise MigrationError(
            f"the database has migrations {unknown} that this imagen-worker does not ship; "
            "upgrade imagen-worker before running against this database"
        )
    return recorded


async def migrate(conn: asyncpg.Connection) -> MigrateResult:
    """Apply every pending migration, each in its own transaction. Safe to run concurrently. An up-to-date
    database is only read, so a login without DDL rights (a JupyterHub user's role) may call this."""
    migrations = load_migrations()
    recorded = await _recorded(conn, migrations)
    if recorded is not None and all(m.version in recorded for m in migrations):
        return MigrateResult(applied=[], already=[m.filename for m in migrations])
    await conn.execute("select pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_BOOKKEEPING)
        recorded = await _recorded(conn, migrations) or {}
        applied: list[str] = []
        for m in migrations:
            if m.version in recorded:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "insert into imagen.schema_migrations (version, name, checksum) values ($1, $2, $3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {m.filename} failed: {exc}") from exc
            applied.append(m.filename)
        return MigrateResult(applied=applied, already=[m.filename for m in migrations if m.version in recorded])
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _LOCK_KEY)


async def pending_migrations(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    """Files not yet applied (all of them when the bookkeeping table does not exist)."""
    exists = await conn.fetchval("select to_regclass('imagen.schema_migrations') is not null")
    done: set[int] = set()
    if exists:
        done = {r[0] for r in await conn.fetch("select version from imagen.schema_migrations")}
    return [m.filename for m in load_migrations() if m.version not in done]
