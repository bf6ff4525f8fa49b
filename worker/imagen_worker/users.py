"""Users with login roles of their own, for JupyterHub (docs/jupyterhub.md, ADR 0008): add, remove,
list, and a fresh password per spawn; the shared pool's own login. The admin connection must be
allowed to create roles."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg

from .errors import ConfigError
from .jobs import hub_owner_id
from .queries import queries


def _q(name: str) -> str:
    return queries("users.sql")[name]


def role_name(hub_name: str) -> str:
    """The Postgres role of a hub user: `imagen_u_` + a readable part + a hash, so that names that
    differ only in characters a role name cannot hold never share a role."""
    readable = re.sub(r"[^a-z0-9]+", "_", hub_name.lower()).strip("_")[:28] or "user"
    digest = uuid.uuid5(uuid.NAMESPACE_URL, hub_name).hex[:8]
    return f"imagen_u_{readable}_{digest}"


@dataclass(frozen=True)
class User:
    owner_user_id: uuid.UUID
    hub_name: str
    db_role: str
    auth_user_id: uuid.UUID | None
    max_pending: int | None
    max_cost_per_day: Decimal | None

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> User:
        return cls(**{f: r[f] for f in cls.__dataclass_fields__})

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, uuid.UUID | Decimal) else v) for k, v in self.__dict__.items()}


async def add_user(
    conn: asyncpg.Connection,
    hub_name: str,
    *,
    worker: bool = False,
    max_pending: int | None = None,
    max_cost_per_day: Decimal | None = None,
    auth_user_id: uuid.UUID | None = None,
    unlimited: bool = False,
) -> User:
    """Create (or update) the user's row and login role; idempotent. `worker`: the role may also run
    the user's own worker (layout (a)). Quotas and `auth_user_id` left as None keep what is stored
    (a spawn does not undo `imagen users add --max-pending ...`); `unlimited` clears both quotas.

    The owner id is fixed when the user is first added: their Supabase `auth_user_id` where one is
    given (on Supabase, owners are auth.users rows, and the database refuses a new user without
    one), else an id derived from the hub name."""
    if not 1 <= len(hub_name) <= 200:
        raise ConfigError("NAME: a hub user name is 1 to 200 characters")
    if unlimited and (max_pending is not None or max_cost_per_day is not None):
        raise ConfigError("a user is either unlimited or given quotas, not both")
    async with conn.transaction():
        await conn.execute(
            _q("add_user"),
            hub_name,
            auth_user_id or hub_owner_id(hub_name),
            role_name(hub_name),
            worker,
            max_pending,
            max_cost_per_day,
            auth_user_id,
        )
        if unlimited:
            await conn.execute(_q("clear_quotas"), hub_name)
    user = await get_user(conn, hub_name)
    assert user is not None
    return user


async def get_user(conn: asyncpg.Connection, hub_name: str) -> User | None:
    row = await conn.fetchrow(_q("get_user"), hub_name)
    return User.from_record(row) if row is not None else None


async def list_users(conn: asyncpg.Connection) -> list[User]:
    return [User.from_record(r) for r in await conn.fetch(_q("list_users"))]


async def remove_user(conn: asyncpg.Connection, hub_name: str) -> bool:
    """Drop the user's role (they can no longer log in) and row; their jobs and images stay."""
    return bool(await conn.fetchval(_q("remove_user"), hub_name))


async def new_password(conn: asyncpg.Connection, hub_name: str) -> tuple[User, str]:
    """A fresh random password for the user's role (the previous one stops working)."""
    user = await get_user(conn, hub_name)
    if user is None:
        raise ConfigError(f"{hub_name!r} is not an imagen user; add them first: imagen users add {hub_name}")
    password = secrets.token_urlsafe(24)
    await conn.execute(_q("set_user_password"), user.db_role, password)
    return user, password


async def login_hub_name(conn: asyncpg.Connection | asyncpg.Pool) -> str | None:
    """The hub user whose own login `conn` is (None for any other login)."""
    value = await conn.fetchval(_q("current_hub_name"))
    return value if isinstance(value, str) else None


async def new_pool_login(conn: asyncpg.Connection, admin_url: str) -> str:
    """The database URL of the shared pool's own login (group role `imagen_pool`: every owner's jobs,
    images and events, the worker registry, provider limits; no canvases, no role creation, no DDL),
    with a fresh password; the previous one stops working. One login per database."""
    password = secrets.token_urlsafe(24)
    role = await conn.fetchval(_q("set_pool_login"), password)
    return user_database_url(admin_url, str(role), password)


def user_database_url(admin_url: str, role: str, password: str) -> str:
    """`admin_url` with the user's role and password in place of the admin's. Where the admin's user
    name is written `name.tenant` (Supavisor, Supabase's pooler: `postgres.<project-ref>`), the
    user's keeps the `.tenant`, which tells the pooler which database to reach."""
    parts = urlsplit(admin_url)
    credentials, at, host = parts.netloc.rpartition("@")
    admin_user = unquote(credentials.split(":", 1)[0]) if at else ""
    tenant = admin_user.partition(".")[2]
    user = f"{role}.{tenant}" if tenant else role
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


TLJH = "tljh"


def check_unix_user_pattern(pattern: str) -> str:
    """`pattern` if it maps hub names to Unix user names (`{name}`, `jupyter-{name}`, or `tljh`),
    else a ConfigError saying how to write it."""
    if pattern == TLJH or (pattern.count("{name}") == 1 and not re.search(r"[{}]", pattern.replace("{name}", ""))):
        return pattern
    raise ConfigError(
        f"IMAGEN_HUB_UNIX_USER={pattern!r} must contain {{name}} once (e.g. 'jupyter-{{name}}'), or be 'tljh'"
    )


def unix_user_name(hub_name: str, pattern: str = "{name}") -> str:
    """The Unix user a hub user's server runs as. `{name}` (LocalProcessSpawner's default): the hub
    name; a pattern such as `jupyter-{name}`: that; `tljh`: The Littlest JupyterHub's rule,
    `jupyter-NAME`, shortened to 26 characters plus `-` and 5 hex digits of its SHA-256 when it is 26
    characters or longer, spaces turned into dashes otherwise."""
    if check_unix_user_pattern(pattern) == TLJH:
        full = f"jupyter-{hub_name}"
        if len(full) < 26:
            return full.replace(" ", "-")
        return f"{full[:26]}-{hashlib.sha256(full.encode('utf-8')).hexdigest()[:5]}"
    return pattern.replace("{name}", hub_name)


class HubStoreOwners:
    """For a shared pool's local store under JupyterHub (`IMAGEN_STORE_OWNERS=hub`): the Unix uid of an
    owner id's hub user (`imagen.users.hub_name`, mapped to the Unix name by `unix_user`, see
    `unix_user_name`), so each user's images are theirs alone on disk. Looked up once per owner."""

    def __init__(self, database_url: str, unix_user: str = "{name}") -> None:
        self.database_url = database_url
        self.unix_user = check_unix_user_pattern(unix_user)
        self._uids: dict[str, int | None] = {}

    async def __call__(self, owner: str) -> int | None:
        if owner not in self._uids:
            import pwd

            try:
                owner_id = uuid.UUID(owner)
            except ValueError:
                return None
            conn = await asyncpg.connect(self.database_url)
            try:
                name = await conn.fetchval(_q("hub_name_of"), owner_id)
            finally:
                await conn.close()
            try:
                self._uids[owner] = pwd.getpwnam(unix_user_name(name, self.unix_user)).pw_uid if name else None
            except KeyError:
                self._uids[owner] = None
        return self._uids[owner]
