"""`imagen migrate`: creates the schema, is a no-op when up to date, safe when run concurrently,
refuses edited history, and applies unchanged to a Supabase-shaped database."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import asyncpg
import pytest

from imagen_worker import migrate as migrate_module
from imagen_worker.errors import MigrationError
from imagen_worker.migrate import Migration, load_migrations, migrate

from ..conftest import IMAGEN

EXPECTED_TABLES = {
    "jobs",
    "images",
    "job_events",
    "canvases",
    "canvas_nodes",
    "canvas_edges",
    "workers",
    "provider_limits",
    "provider_slots",
    "schema_migrations",
}


def run_migrate(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMAGEN, "migrate", "--database-url", url], capture_output=True, text=True, timeout=120)


def test_migrate_cli_creates_the_schema_and_a_second_run_changes_nothing(empty_db_url: str) -> None:
    first = run_migrate(empty_db_url)
    assert first.returncode == 0, first.stderr
    assert f"{len(load_migrations())} migration(s) applied" in first.stdout

    async def tables() -> set[str]:
        conn = await asyncpg.connect(empty_db_url)
        try:
            rows = await conn.fetch("select tablename from pg_tables where schemaname = 'imagen'")
            return {r[0] for r in rows}
        finally:
            await conn.close()

    assert asyncio.run(tables()) == EXPECTED_TABLES
    second = run_migrate(empty_db_url)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout and "nothing to do" in second.stdout


def test_two_concurrent_migrate_runs_both_succeed_and_apply_each_file_once(empty_db_url: str) -> None:
    procs = [
        subprocess.Popen(
            [*IMAGEN, "migrate", "--database-url", empty_db_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    applied = sum(out.count("applied 0") for out, _ in outs)
    assert applied == len(load_migrations())

    async def count() -> int:
        conn = await asyncpg.connect(empty_db_url)
        try:
            return int(await conn.fetchval("select count(*) from imagen.schema_migrations"))
        finally:
            await conn.close()

    assert asyncio.run(count()) == len(load_migrations())


@pytest.mark.asyncio
async def test_migrate_refuses_when_an_applied_file_changed(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    originals = load_migrations()
    edited = [Migration(m.version, m.name, m.sql + "\n-- edited\n") if m.version == 2 else m for m in originals]
    monkeypatch.setattr(migrate_module, "load_migrations", lambda: edited)
    conn = await asyncpg.connect(db_url)
    try:
        with pytest.raises(MigrationError, match=r"0002_imagen_schema\.sql was changed after it was applied"):
            await migrate(conn)
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_migrations_apply_unchanged_where_supabase_already_provides_roles_and_auth(empty_db_url: str) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        # What a Supabase project has before our migrations: auth.users and its own auth.uid().
        await conn.execute(
            """
            create schema auth;
            create table auth.users (id uuid primary key);
            create function auth.uid() returns uuid language sql stable as
              $$ select nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
            """
        )
        result = await migrate(conn)
        assert len(result.applied) == len(load_migrations())
        # Ours did not replace theirs, and owners now reference auth.users.
        body = await conn.fetchval("select prosrc from pg_proc where proname = 'uid'")
        assert "request.jwt.claims" not in body
        fks = await conn.fetch(
            """select conrelid::regclass::text as t from pg_constraint
               where contype = 'f' and confrelid = 'auth.users'::regclass"""
        )
        assert {r["t"] for r in fks} == {"imagen.jobs", "imagen.images", "imagen.canvases"}
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute("insert into imagen.jobs (owner_user_id, prompt) values (gen_random_uuid(), 'x')")
    finally:
        await conn.close()


def test_migrations_ship_inside_the_worker_package() -> None:
    files = sorted(p.name for p in (Path(migrate_module.__file__).parent / "migrations").glob("*.sql"))
    assert files == [m.filename for m in load_migrations()]
    assert files[0].startswith("0001_")
