"""`imagen users` and the pool's login on a cluster that checks passwords (scram-sha-256): a rotated
password stops working, a removed user cannot log in, the pool's login is its own. No hub needed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator

import asyncpg
import pytest

from imagen_worker.users import user_database_url

from ..conftest import IMAGEN
from .harness import Cluster


@pytest.fixture(scope="module")
def env(cluster: Cluster) -> Iterator[dict[str, str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEN_")}
    yield {**clean, "IMAGEN_DATABASE_URL": cluster.admin_url}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMAGEN, *args], env=env, capture_output=True, text=True, timeout=60)


def logs_in(url: str) -> str:
    """ "ok", or the name of the error logging in with `url` raised."""

    async def go() -> str:
        try:
            conn = await asyncpg.connect(url)
        except asyncpg.PostgresError as exc:
            return type(exc).__name__
        await conn.close()
        return "ok"

    return asyncio.run(go())


def new_password(cluster: Cluster, name: str) -> str:
    """The URL of `name`'s login with a fresh password, as a spawn gets it."""
    from imagen_worker.users import new_password as rotate

    async def go() -> str:
        conn = await asyncpg.connect(cluster.admin_url)
        try:
            user, password = await rotate(conn, name)
        finally:
            await conn.close()
        return user_database_url(cluster.admin_url, user.db_role, password)

    return asyncio.run(go())


def test_the_hub_tests_carry_the_hub_marker(request: pytest.FixtureRequest) -> None:
    """`pytest tests/hub -m hub` selects them (conftest.py marks every test of the folder)."""
    assert request.node.get_closest_marker("hub") is not None


def test_a_rotated_password_stops_working_and_a_removed_user_cannot_log_in(
    cluster: Cluster, env: dict[str, str]
) -> None:
    added = cli(env, "users", "add", "imagen-carol", "--json")
    assert added.returncode == 0, added.stderr
    role = json.loads(added.stdout)["db_role"]
    assert logs_in(user_database_url(cluster.admin_url, role, "")) == "InvalidPasswordError"  # none set yet
    first = new_password(cluster, "imagen-carol")
    assert logs_in(first) == "ok"
    second = new_password(cluster, "imagen-carol")  # the next spawn
    assert (logs_in(first), logs_in(second)) == ("InvalidPasswordError", "ok")
    again = cli(env, "users", "add", "imagen-carol", "--json")  # idempotent: same role, same password
    assert json.loads(again.stdout)["db_role"] == role and logs_in(second) == "ok"
    removed = cli(env, "users", "remove", "imagen-carol")
    assert removed.stdout.strip() == "imagen-carol: removed"
    assert logs_in(second) == "InvalidPasswordError"  # the role is gone
    assert cli(env, "users", "remove", "imagen-carol").stdout.strip() == "imagen-carol: was not a user"


def test_the_pool_login_gets_a_fresh_password_each_time_and_cannot_create_roles(
    cluster: Cluster, env: dict[str, str]
) -> None:
    first = cli(env, "users", "pool-login")
    second = cli(env, "users", "pool-login")
    assert first.returncode == second.returncode == 0, (first.stderr, second.stderr)
    first_url, second_url = first.stdout.strip(), second.stdout.strip()
    assert (logs_in(first_url), logs_in(second_url)) == ("InvalidPasswordError", "ok")

    async def attributes() -> asyncpg.Record:
        conn = await asyncpg.connect(second_url)
        try:
            return await conn.fetchrow(
                "select rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, "
                "pg_has_role(current_user, 'imagen_pool', 'member') as pool from pg_roles where rolname = current_user"
            )
        finally:
            await conn.close()

    assert dict(asyncio.run(attributes())) == {
        "rolsuper": False,
        "rolcreaterole": False,
        "rolcreatedb": False,
        "rolbypassrls": False,
        "pool": True,
    }
