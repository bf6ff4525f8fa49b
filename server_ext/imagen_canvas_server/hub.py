"""JupyterHub wiring (docs/jupyterhub.md, ADR 0008): `configure(c, ...)` in `jupyterhub_config.py`.

Every spawn gets the user a database login of their own (created on first spawn, a fresh password
each time), and the user's server is handed only that login. Two layouts:

- `layout="per-user"`: each user's server runs the in-process worker in owner scope, with the
  user's own provider keys (`user_environment`), writing images into the user's own data folder.
- `layout="pool"`: the hub runs `imagen worker --scope all` as a managed service with a login of
  its own (group role `imagen_pool`: what a worker needs, not the admin's rights) and the
  organisation's provider keys (`pool_environment`); users' servers run no worker and read their
  images from `store_dir`, where the pool hands each owner's folder to that user's Unix account
  (`IMAGEN_STORE_OWNERS=hub`, the Unix name from `unix_user`).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from imagen_worker.db import connect
from imagen_worker.users import (
    add_user,
    check_unix_user_pattern,
    get_user,
    new_password,
    new_pool_login,
    user_database_url,
)

LAYOUTS = ("per-user", "pool")


def spawn_environment(
    database_url: str,
    *,
    layout: str = "per-user",
    store_dir: str | Path | None = None,
    max_pending: int | None = None,
    max_cost_per_day: float | None = None,
    user_environment: Mapping[str, str] | None = None,
) -> Callable[[Any], Awaitable[None]]:
    """A `pre_spawn_hook`: make sure the user has a login, give it a fresh password, and put the
    user's database URL (and the layout's settings) in the spawner's environment. `max_pending` and
    `max_cost_per_day` are the quotas of users a spawn creates; a spawn of a user already there keeps
    what is stored (`imagen users add NAME --max-pending N` is not undone)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} must be one of {', '.join(LAYOUTS)}")
    if layout == "pool" and store_dir is None:
        raise ValueError("layout 'pool' needs store_dir: the folder the pool writes users' images into")

    async def hook(spawner: Any) -> None:
        name = spawner.user.name
        conn = await asyncpg.connect(database_url)
        try:
            # configure()'s quotas are those of users a spawn creates; a user already there keeps
            # what is stored (`imagen users add NAME --max-pending N`, `--unlimited`).
            new = await get_user(conn, name) is None
            await add_user(
                conn,
                name,
                worker=layout == "per-user",
                max_pending=max_pending if new else None,
                max_cost_per_day=Decimal(str(max_cost_per_day)) if new and max_cost_per_day is not None else None,
            )
            user, password = await new_password(conn, name)
        finally:
            await conn.close()
        env = {
            "IMAGEN_DATABASE_URL": user_database_url(database_url, user.db_role, password),
            "IMAGEN_STORAGE": "local",
        }
        if layout == "per-user":
            env.update({"IMAGEN_SERVER_WORKER": "true", "IMAGEN_WORKER_SCOPE": "owner"})
        else:
            env.update({"IMAGEN_SERVER_WORKER": "false", "IMAGEN_LOCAL_STORE_DIR": str(store_dir)})
        env.update(user_environment or {})
        spawner.environment.update(env)

    return hook


def pool_service(
    database_url: str,
    store_dir: str | Path,
    *,
    name: str = "imagen-pool",
    concurrency: int = 8,
    python: str = sys.executable,
    environment: Mapping[str, str] | None = None,
    unix_user: str = "{name}",
) -> dict[str, Any]:
    """A `c.JupyterHub.services` entry: the shared worker pool, run by the hub with `database_url`
    (the pool's own login, `pool_login`), out of users' reach. `unix_user`: how a hub name maps to
    the Unix user owning that user's images (`{name}`, `jupyter-{name}`, `tljh`)."""
    return {
        "name": name,
        "command": [python, "-m", "imagen_worker", "worker", "--scope", "all", "--concurrency", str(concurrency)],
        "environment": {
            "IMAGEN_DATABASE_URL": database_url,
            "IMAGEN_STORAGE": "local",
            "IMAGEN_LOCAL_STORE_DIR": str(store_dir),
            "IMAGEN_STORE_OWNERS": "hub",
            "IMAGEN_HUB_UNIX_USER": check_unix_user_pattern(unix_user),
            **(environment or {}),
        },
    }


T = TypeVar("T")


def _run(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, also where an event loop is running (the hub
    loads its config inside one): in a thread of its own."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="imagen-hub-setup")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def pool_login(database_url: str) -> str:
    """Migrate the schema with the admin login `database_url`, and return the URL of the shared pool's
    own login with a fresh password (the previous one stops working)."""

    async def go() -> str:
        conn = await connect(database_url)
        try:
            return await new_pool_login(conn, database_url)
        finally:
            await conn.close()

    return _run(go)


def configure(
    c: Any,
    *,
    database_url: str,
    layout: str = "per-user",
    store_dir: str | Path | None = None,
    max_pending: int | None = None,
    max_cost_per_day: float | None = None,
    user_environment: Mapping[str, str] | None = None,
    pool_environment: Mapping[str, str] | None = None,
    pool_concurrency: int = 8,
    python: str = sys.executable,
    unix_user: str = "{name}",
    pool_database_url: str | None = None,
) -> None:
    """Wire imagen-canvas into a JupyterHub config: the pre-spawn hook (chained after one already
    set) and, for `layout="pool"`, the worker pool as a managed service. `database_url` is the admin
    login (it may create roles); it stays in the hub, never in a user's server nor in the pool.

    For the pool layout, the hub migrates the schema when it loads this config and gives the pool
    its own login with a fresh password (`pool_login`), unless `pool_database_url` names one (made
    with `imagen users pool-login`, for pool workers on other machines too). `unix_user`: the Unix
    user of a hub user, for the pool's image store: `{name}` (LocalProcessSpawner), a pattern
    such as `jupyter-{name}`, or `tljh` (The Littlest JupyterHub's names)."""
    check_unix_user_pattern(unix_user)
    hook = spawn_environment(
        database_url,
        layout=layout,
        store_dir=store_dir,
        max_pending=max_pending,
        max_cost_per_day=max_cost_per_day,
        user_environment=user_environment,
    )
    previous = c.Spawner.pre_spawn_hook if "pre_spawn_hook" in c.Spawner else None

    async def chained(spawner: Any) -> None:
        if callable(previous):
            result = previous(spawner)
            if hasattr(result, "__await__"):
                await result
        await hook(spawner)

    c.Spawner.pre_spawn_hook = chained
    if layout == "pool":
        assert store_dir is not None
        services = list(c.JupyterHub.services) if "services" in c.JupyterHub else []
        services.append(
            pool_service(
                pool_database_url or pool_login(database_url),
                store_dir,
                concurrency=pool_concurrency,
                python=python,
                environment=pool_environment,
                unix_user=unix_user,
            )
        )
        c.JupyterHub.services = services
