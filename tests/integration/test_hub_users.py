"""JupyterHub users' own logins on a scratch database (ADR 0008, migration 0011): `imagen users`,
what a user's own login may write, quotas under concurrency, a spawn keeping stored settings,
Supabase-shaped databases, the shared pool's own login, one database per login, and the server's
check that its login is its JUPYTERHUB_USER's.

The local server uses `trust` authentication, so these connect as a user's role without its
password; passwords themselves are checked in tests/hub/test_hub_logins.py (a scram-sha-256
cluster). Role names are cluster-wide: every name here is unique, and every role made is dropped."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from imagen_worker import users as users_module
from imagen_worker.config import Settings
from imagen_worker.migrate import migrate
from imagen_worker.storage import LocalStorage, storage_from_settings
from imagen_worker.users import HubStoreOwners, User, add_user, get_user, remove_user, user_database_url

from ..conftest import IMAGEN, _create_database, _drop_database, run_sync, url_for


def unique(label: str) -> str:
    return f"t{uuid.uuid4().hex[:8]}-{label}"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMAGEN, *args], env=env, capture_output=True, text=True, timeout=60)


async def _drop_roles(admin_url: str, names: list[str]) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        for name in names:
            await remove_user(conn, name)
    finally:
        await conn.close()


@pytest.fixture
def made(db_url: str) -> Iterator[list[str]]:
    """Hub names this test adds to `db_url`; their roles are dropped after the test."""
    names: list[str] = []
    yield names
    run_sync(lambda: _drop_roles(db_url, names))


@pytest_asyncio.fixture
async def admin(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    yield conn
    await conn.close()


async def new_user(admin: asyncpg.Connection, made: list[str], label: str, **kwargs: Any) -> User:
    name = unique(label)
    made.append(name)
    return await add_user(admin, name, **kwargs)


async def login(db_url: str, user: User) -> asyncpg.Connection:
    """A connection as the user's own role (trust: the password is not checked here)."""
    return await asyncpg.connect(user_database_url(db_url, user.db_role, "unchecked"))


# -- 1. a user's own worker writes only its own jobs' images and events --------------------------


@pytest.mark.asyncio
async def test_a_users_own_worker_login_writes_images_and_events_of_its_own_jobs_only(
    db_url: str, cli_env: dict[str, str], made: list[str], admin: asyncpg.Connection
) -> None:
    a_name, b_name = unique("alice"), unique("bob")
    made += [a_name, b_name]
    for name in (a_name, b_name):
        out = cli(cli_env, "users", "add", name, "--worker", "--json")
        assert out.returncode == 0, out.stderr
    a, b = await get_user(admin, a_name), await get_user(admin, b_name)
    assert a is not None and b is not None
    a_conn, b_conn = await login(db_url, a), await login(db_url, b)
    try:
        a_job = await a_conn.fetchval(
            "insert into imagen.jobs (owner_user_id, prompt) values ($1, 'a') returning id", a.owner_user_id
        )
        b_job = await b_conn.fetchval(
            "insert into imagen.jobs (owner_user_id, prompt) values ($1, 'b') returning id", b.owner_user_id
        )

        image_sql = (
            "insert into imagen.images (owner_user_id, job_id, bucket, path, thumb_path, content_type, width, "
            "height, bytes, sha256) values ($1, $2, 'images', $3, $4, 'image/png', 1, 1, 1, $5)"
        )
        event_sql = "insert into imagen.job_events (job_id, owner_user_id, kind, payload) values ($1, $2, 'log', '{}')"
        mine, theirs = str(b.owner_user_id), str(a.owner_user_id)
        refused: dict[str, tuple[str, tuple[Any, ...]]] = {
            "image naming A's job": (image_sql, (b.owner_user_id, a_job, f"{mine}/x.png", None, "0" * 64)),
            "image at A's path": (image_sql, (b.owner_user_id, b_job, f"{theirs}/{a_job}.png", None, "0" * 64)),
            "image climbing into A's folder": (
                image_sql,
                (b.owner_user_id, b_job, f"{mine}/../{theirs}/{a_job}.png", None, "0" * 64),
            ),
            "thumbnail at A's path": (
                image_sql,
                (b.owner_user_id, b_job, f"{mine}/y.png", f"{theirs}/{a_job}.thumb.webp", "0" * 64),
            ),
            "event on A's job": (event_sql, (a_job, b.owner_user_id)),
        }
        for label, (sql, args) in refused.items():
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await b_conn.execute(sql, *args)
                pytest.fail(f"B's login could write an {label}")
        # What B's own worker does write: its own job's image, in its own folder, and its events.
        await b_conn.execute(
            image_sql, b.owner_user_id, b_job, f"{mine}/{b_job}.png", f"{mine}/{b_job}.thumb.webp", "1" * 64
        )
        await b_conn.execute(event_sql, b_job, b.owner_user_id)
        # A's real result still goes in: nothing of B's holds A's job id or path.
        await a_conn.execute(
            "insert into imagen.images (owner_user_id, job_id, bucket, path, content_type, width, height, bytes, "
            "sha256) values ($1, $2, 'images', $3, 'image/png', 1, 1, 1, $4)",
            a.owner_user_id,
            a_job,
            f"{a.owner_user_id}/{a_job}.png",
            "0" * 64,
        )
        assert (
            await admin.fetchval(
                "select count(*) from imagen.job_events where job_id = $1 and owner_user_id = $2",
                a_job,
                b.owner_user_id,
            )
            == 0
        )
    finally:
        await a_conn.close()
        await b_conn.close()


# -- 2. a spawn keeps what `imagen users add` stored ----------------------------------------------


@pytest.mark.asyncio
async def test_a_spawn_keeps_the_quotas_and_auth_id_that_users_add_stored(
    db_url: str, cli_env: dict[str, str], made: list[str], admin: asyncpg.Connection
) -> None:
    from imagen_canvas_server.hub import spawn_environment

    name = unique("carol")
    made.append(name)
    auth_id = uuid.uuid4()
    out = cli(
        cli_env, "users", "add", name, "--max-pending", "7", "--max-cost-per-day", "2.5", "--auth-user-id", str(auth_id)
    )
    assert out.returncode == 0, out.stderr
    # The hub's hook, as configure(c, max_pending=200) would set it (a new user would get 200).
    hook = spawn_environment(db_url, layout="per-user", max_pending=200, max_cost_per_day=9.0)
    spawner = SimpleNamespace(user=SimpleNamespace(name=name), environment={})
    await hook(spawner)
    user = await get_user(admin, name)
    assert user is not None
    assert (user.max_pending, user.max_cost_per_day, user.auth_user_id) == (7, Decimal("2.5"), auth_id)
    assert user.db_role in spawner.environment["IMAGEN_DATABASE_URL"]
    # Re-adding without options keeps them too; given ones replace them; --unlimited clears them.
    await add_user(admin, name)
    assert (await get_user(admin, name)) == user
    assert cli(cli_env, "users", "add", name, "--max-pending", "3").returncode == 0
    assert (await get_user(admin, name)).max_pending == 3  # type: ignore[union-attr]
    assert cli(cli_env, "users", "add", name, "--unlimited").returncode == 0
    cleared = await get_user(admin, name)
    assert cleared is not None and (cleared.max_pending, cleared.max_cost_per_day) == (None, None)
    await hook(spawner)  # a user already there: configure()'s quotas are not put back
    assert (await get_user(admin, name)) == cleared
    # A user the spawn creates gets configure()'s quotas.
    newcomer = unique("dave")
    made.append(newcomer)
    await hook(SimpleNamespace(user=SimpleNamespace(name=newcomer), environment={}))
    added = await get_user(admin, newcomer)
    assert added is not None and (added.max_pending, added.max_cost_per_day) == (200, Decimal("9"))


# -- 5. quotas from the user's own login ----------------------------------------------------------


@pytest.mark.asyncio
async def test_max_pending_holds_for_concurrent_inserts_from_the_users_own_login(
    db_url: str, made: list[str], admin: asyncpg.Connection
) -> None:
    user = await new_user(admin, made, "erin", max_pending=3)
    conns = [await login(db_url, user) for _ in range(6)]

    async def submit(conn: asyncpg.Connection) -> str:
        try:
            async with conn.transaction():
                await conn.execute(
                    "insert into imagen.jobs (owner_user_id, prompt) values ($1, 'concurrent')", user.owner_user_id
                )
                await asyncio.sleep(0.3)  # the others insert while this one has not committed
            return "ok"
        except asyncpg.ConfigurationLimitExceededError as exc:
            assert "quota: 3 pending jobs" in str(exc)
            return "refused"

    try:
        results = await asyncio.wait_for(asyncio.gather(*(submit(c) for c in conns)), 30)
    finally:
        for conn in conns:
            await conn.close()
    assert sorted(results) == ["ok"] * 3 + ["refused"] * 3
    pending = await admin.fetchval(
        "select count(*) from imagen.jobs where owner_user_id = $1 and status = 'pending'", user.owner_user_id
    )
    assert pending == 3


@pytest.mark.asyncio
async def test_a_user_with_a_quota_adds_no_jobs_in_a_repeatable_read_transaction(
    db_url: str, made: list[str], admin: asyncpg.Connection
) -> None:
    """A repeatable-read snapshot would not see jobs committed after it was taken, so the count could
    miss them however inserts are serialised: refused, for owners with a quota."""
    user = await new_user(admin, made, "erin", max_pending=3)
    conn = await login(db_url, user)
    try:
        with pytest.raises(asyncpg.InvalidTransactionStateError, match="read committed"):
            async with conn.transaction(isolation="repeatable_read"):
                await conn.execute(
                    "insert into imagen.jobs (owner_user_id, prompt) values ($1, 'rr')", user.owner_user_id
                )
        async with conn.transaction(isolation="serializable"):
            await conn.execute("insert into imagen.jobs (owner_user_id, prompt) values ($1, 'ok')", user.owner_user_id)
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_a_non_zero_cost_cap_refuses_new_jobs_once_the_days_jobs_cost_it(
    db_url: str, made: list[str], admin: asyncpg.Connection
) -> None:
    user = await new_user(admin, made, "frank", max_cost_per_day=Decimal("0.05"))
    conn = await login(db_url, user)

    async def submit_and_finish(cost: str) -> None:
        job_id = await conn.fetchval(
            "insert into imagen.jobs (owner_user_id, prompt) values ($1, 'priced') returning id", user.owner_user_id
        )
        await admin.execute(
            "update imagen.jobs set status = 'done', completed_at = now(), cost_usd = $2 where id = $1",
            job_id,
            Decimal(cost),
        )

    try:
        await submit_and_finish("0.03")
        await submit_and_finish("0.03")  # $0.03 spent so far: under the cap, so this one starts
        with pytest.raises(asyncpg.ConfigurationLimitExceededError, match=r"cost \$0\.06.*\$0\.05"):
            await conn.execute("insert into imagen.jobs (owner_user_id, prompt) values ($1, 'x')", user.owner_user_id)
    finally:
        await conn.close()


# -- 6. imagen users add / remove / list ----------------------------------------------------------


@pytest.mark.asyncio
async def test_users_add_is_idempotent_list_shows_users_and_remove_twice_says_so(
    db_url: str, cli_env: dict[str, str], made: list[str]
) -> None:
    name = unique("gina")
    made.append(name)
    first = cli(cli_env, "users", "add", name, "--max-pending", "4", "--json")
    again = cli(cli_env, "users", "add", name, "--json")
    assert first.returncode == again.returncode == 0, (first.stderr, again.stderr)
    assert json.loads(first.stdout) == json.loads(again.stdout)
    user = json.loads(first.stdout)
    assert user["max_pending"] == 4 and user["db_role"].startswith("imagen_u_")
    listed = cli(cli_env, "users", "list", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r for r in rows if r["hub_name"] == name] == [user]
    assert name in cli(cli_env, "users", "list").stdout

    conn = await asyncpg.connect(user_database_url(db_url, user["db_role"], "unchecked"))
    assert str(await conn.fetchval("select imagen.current_owner()")) == user["owner_user_id"]
    await conn.close()

    first_remove, second_remove = cli(cli_env, "users", "remove", name), cli(cli_env, "users", "remove", name)
    assert (first_remove.returncode, second_remove.returncode) == (0, 0)
    assert first_remove.stdout.strip() == f"{name}: removed"
    assert second_remove.stdout.strip() == f"{name}: was not a user"
    assert name not in cli(cli_env, "users", "list").stdout
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):  # the role is gone
        await asyncpg.connect(user_database_url(db_url, user["db_role"], "unchecked"))


# -- 4. Supabase-shaped databases ---------------------------------------------------------------


SUPABASE_AUTH = """
create schema auth;
create table auth.users (id uuid primary key);
create function auth.uid() returns uuid language sql stable as
  $$ select nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
"""


@dataclass
class Supabase:
    url: str
    made: list[str]


@pytest_asyncio.fixture
async def supabase_db(empty_db_url: str) -> AsyncIterator[Supabase]:
    conn = await asyncpg.connect(empty_db_url)
    await conn.execute(SUPABASE_AUTH)
    await migrate(conn)
    await conn.close()
    shape = Supabase(empty_db_url, [])
    yield shape
    await _drop_roles(empty_db_url, shape.made)


@pytest.mark.asyncio
async def test_on_a_supabase_database_a_hub_users_owner_is_their_auth_user_and_their_login_submits(
    supabase_db: Supabase,
) -> None:
    admin = await asyncpg.connect(supabase_db.url)
    try:
        auth_id = await admin.fetchval("insert into auth.users (id) values (gen_random_uuid()) returning id")
        name, nameless = unique("hana"), unique("ivan")
        supabase_db.made += [name, nameless]
        user = await add_user(admin, name, auth_user_id=auth_id)
        assert user.owner_user_id == user.auth_user_id == auth_id
        # Without an auth.users id a new user could never own a job here: refused, saying what to do.
        with pytest.raises(asyncpg.InvalidParameterValueError, match=r"auth\.users id") as refused:
            await add_user(admin, nameless)
        assert "--auth-user-id" in (refused.value.hint or "")
        await add_user(admin, name)  # a spawn of a user already there needs no id, and keeps it
        assert (await get_user(admin, name)) == user
    finally:
        await admin.close()
    conn = await login(supabase_db.url, user)
    try:
        job = await conn.fetchval(
            "insert into imagen.jobs (owner_user_id, prompt) values ($1, 'x') returning owner_user_id", auth_id
        )
        assert job == auth_id
        assert await users_module.login_hub_name(conn) == name
    finally:
        await conn.close()


def test_the_users_database_url_keeps_the_poolers_tenant_and_the_admins_host() -> None:
    pooler = "postgresql://postgres.abcdefghijklmnopqrst:s3cret@aws-0-eu-central-1.pooler.supabase.com:5432/postgres"
    assert user_database_url(pooler, "imagen_u_ann_1a2b3c4d", "p/w@") == (
        "postgresql://imagen_u_ann_1a2b3c4d.abcdefghijklmnopqrst:p%2Fw%40@aws-0-eu-central-1.pooler.supabase.com:5432/postgres"
    )
    direct = "postgresql://postgres:s3cret@db.abcdefghijklmnopqrst.supabase.co:5432/postgres?sslmode=require"
    assert user_database_url(direct, "imagen_u_ann_1a2b3c4d", "pw") == (
        "postgresql://imagen_u_ann_1a2b3c4d:pw@db.abcdefghijklmnopqrst.supabase.co:5432/postgres?sslmode=require"
    )


# -- 7. the server's login must be its JUPYTERHUB_USER's ------------------------------------------


@pytest.mark.parametrize("shape", ["plain", "supabase"])
@pytest.mark.asyncio
async def test_a_users_server_starts_only_for_the_hub_user_its_login_belongs_to(
    shape: str,
    db_url: str,
    supabase_db: Supabase,
    made: list[str],
    admin: asyncpg.Connection,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """app.py refuses a login of another user than JUPYTERHUB_USER (a spawner handing out the wrong
    URL), and accepts the right one also where the owner id is a Supabase auth.users id."""
    from imagen_canvas_server.app import ImagenCanvasApp

    if shape == "plain":
        url, user = db_url, await new_user(admin, made, "jill", worker=True)
    else:
        sb = await asyncpg.connect(supabase_db.url)
        try:
            auth_id = await sb.fetchval("insert into auth.users (id) values (gen_random_uuid()) returning id")
            name = unique("jill")
            supabase_db.made.append(name)
            url, user = supabase_db.url, await add_user(sb, name, auth_user_id=auth_id)
        finally:
            await sb.close()
    monkeypatch.setenv("IMAGEN_DATA_DIR", str(data_dir))
    for key in ("IMAGEN_DATABASE_URL", "IMAGEN_OWNER_USER_ID", "IMAGEN_STORAGE"):
        monkeypatch.delenv(key, raising=False)

    async def start(hub_user: str) -> tuple[str | None, uuid.UUID]:
        monkeypatch.setenv("JUPYTERHUB_USER", hub_user)
        app = ImagenCanvasApp(database_url=user_database_url(url, user.db_role, "unchecked"), run_worker=False)
        app.initialize_settings()
        try:
            await asyncio.wait_for(app.services.ready.wait(), 30)
            return app.services.error, app.services.owner
        finally:
            await app.stop_extension()

    error, _ = await start(unique("mallory"))
    assert error is not None and "belongs to another user" in error
    error, owner = await start(user.hub_name)
    assert error is None and owner == user.owner_user_id


# -- role names are cluster-wide -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_users_login_belongs_to_one_imagen_database_and_is_nobody_in_another(
    db_url: str, pg_admin_url: str, template_db: str, made: list[str], admin: asyncpg.Connection
) -> None:
    other_name = f"imagen_t_{uuid.uuid4().hex[:12]}"
    await _create_database(pg_admin_url, other_name, template_db)
    other_url = url_for(pg_admin_url, other_name)
    user = await new_user(admin, made, "kim", worker=True)
    other = await asyncpg.connect(other_url)
    try:
        # The same hub name in another imagen database of the cluster would share the login (role
        # names are cluster-wide): refused, rather than two databases' users behind one password.
        with pytest.raises(asyncpg.DuplicateObjectError, match="already the login of a hub user"):
            await add_user(other, user.hub_name)
        victim = uuid.uuid4()
        job = await other.fetchval(
            "insert into imagen.jobs (owner_user_id, prompt) values ($1, 'v') returning id", victim
        )
        # The login reaches the other database (CONNECT is PUBLIC's), but is nobody there, whatever
        # claims it sets.
        stray = await asyncpg.connect(user_database_url(other_url, user.db_role, "unchecked"))
        try:
            await stray.execute("select set_config('request.jwt.claims', $1, false)", json.dumps({"sub": str(victim)}))
            assert await stray.fetchval("select imagen.current_owner()") is None
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await stray.fetchval("select imagen.cancel_job($1)", job)
            assert await stray.fetchval("select imagen.report_waiting($1, 'x')", job) is None
            assert await stray.fetchval("select count(*) from imagen.jobs") == 0
        finally:
            await stray.close()
        assert await other.fetchval("select status from imagen.jobs where id = $1", job) == "pending"
    finally:
        await other.close()
        await _drop_database(pg_admin_url, other_name)


# -- 9. the shared pool's own login --------------------------------------------------------------


@pytest.fixture
def pool_role(db_url: str) -> Iterator[Callable[[str], None]]:
    """Records the pool login made for `db_url`, dropped after the test (it is cluster-wide)."""
    roles: list[str] = []
    yield roles.append

    async def drop() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            for role in roles:
                await conn.execute(f'drop owned by "{role}"')
                await conn.execute(f'drop role if exists "{role}"')
        finally:
            await conn.close()

    run_sync(drop)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_pools_own_login_runs_every_owners_jobs_and_nothing_more(
    db_url: str, cli_env: dict[str, str], pool_role: Callable[[str], None], admin: asyncpg.Connection
) -> None:
    made = cli(cli_env, "users", "pool-login")
    assert made.returncode == 0, made.stderr
    pool_url = made.stdout.strip()
    role = pool_url.split("//", 1)[1].split(":", 1)[0]
    pool_role(role)
    assert role.startswith("imagen_pool_") and pool_url.endswith(db_url.rsplit("@", 1)[1])
    owners = [uuid.uuid4(), uuid.uuid4()]
    jobs = [
        await admin.fetchval("insert into imagen.jobs (owner_user_id, prompt) values ($1, 'pool') returning id", o)
        for o in owners
    ]
    worker = subprocess.Popen(
        [*IMAGEN, "worker", "--scope", "all", "--poll-interval", "0.3"],
        env={**cli_env, "IMAGEN_DATABASE_URL": pool_url},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while await admin.fetchval("select count(*) from imagen.jobs where id = any($1) and status = 'done'", jobs) < 2:
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "the pool login's worker did not finish both owners' jobs"
            await asyncio.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, log = worker.communicate(timeout=30)
    assert worker.returncode == 0, log
    assert "permission denied" not in log
    assert await admin.fetchval("select count(*) from imagen.images where job_id = any($1)", jobs) == 2

    conn = await asyncpg.connect(pool_url)
    try:
        for sql in (
            "create role imagen_pool_escape",
            "select * from imagen.canvases",
            "update imagen.users set max_pending = null",
            "alter table imagen.jobs disable row level security",
            "select imagen.add_user('x', gen_random_uuid(), 'imagen_u_x', false, null, null, null)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
        attributes = await conn.fetchrow(
            "select rolsuper, rolcreaterole, rolcreatedb, rolbypassrls from pg_roles where rolname = current_user"
        )
        assert not any(attributes.values())
    finally:
        await conn.close()
    # A fresh login: the previous password stops working (where passwords are checked at all).
    again = cli(cli_env, "users", "pool-login")
    assert again.returncode == 0 and again.stdout.strip() != pool_url


# -- 3. TLJH: hub names map to Unix users -----------------------------------------------------------


@pytest.mark.asyncio
async def test_the_pools_store_hands_images_to_the_unix_user_the_pattern_names(
    db_url: str, made: list[str], admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    user = await new_user(admin, made, "lee")
    asked: list[str] = []

    def getpwnam(name: str) -> Any:
        asked.append(name)
        return SimpleNamespace(pw_uid=4242)

    import pwd

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    assert await HubStoreOwners(db_url, "jupyter-{name}")(str(user.owner_user_id)) == 4242
    assert asked == [f"jupyter-{user.hub_name}"]
    # From the environment the pool service gets (IMAGEN_HUB_UNIX_USER), through the local store.
    settings = Settings.from_env(
        {
            "IMAGEN_DATABASE_URL": db_url,
            "IMAGEN_DATA_DIR": str(data_dir),
            "IMAGEN_STORE_OWNERS": "hub",
            "IMAGEN_HUB_UNIX_USER": "tljh",
        }
    )
    storage = storage_from_settings(settings)
    assert isinstance(storage, LocalStorage)
    assert await storage._owner_uids(str(user.owner_user_id)) == 4242  # type: ignore[misc]
    assert asked[-1] == f"jupyter-{user.hub_name}"  # short names: TLJH's rule is the prefix alone
