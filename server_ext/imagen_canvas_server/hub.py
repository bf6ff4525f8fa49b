"""JupyterHub wiring (docs/jupyterhub.md, ADR 0008): `configure(c, ...)` in `jupyterhub_config.py`.

Every spawn gets the user a database login of their own (created on first spawn, a fresh password
each time), and the user's server is handed only that login. Two layouts:

- `layout="per-user"`: each user's server runs the in-process worker in owner scope, with the
  user's own provider keys (`user_environment`), writing images into the user's own data folder.
- `layout="pool"`: the hub runs `imagen worker --scope all` as a managed service with the service
  credentials and the organisation's provider keys (`pool_environment`); users' servers run no
  worker and read their images from `store_dir`, where the pool hands each owner's folder to that
  user's Unix account (`IMAGEN_STORE_OWNERS=hub`).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from imagen_worker.users import add_user, new_password, user_database_url

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
    user's database URL (and the layout's settings) in the spawner's environment."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} must be one of {', '.join(LAYOUTS)}")
    if layout == "pool" and store_dir is None:
        raise ValueError("layout 'pool' needs store_dir: the folder the pool writes users' images into")

    async def hook(spawner: Any) -> None:
        name = spawner.user.name
        conn = await asyncpg.connect(database_url)
        try:
            await add_user(
                conn,
                name,
                worker=layout == "per-user",
                max_pending=max_pending,
                max_cost_per_day=Decimal(str(max_cost_per_day)) if max_cost_per_day is not None else None,
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
) -> dict[str, Any]:
    """A `c.JupyterHub.services` entry: the shared worker pool, run by the hub with the service
    credentials, out of users' reach."""
    return {
        "name": name,
        "command": [python, "-m", "imagen_worker", "worker", "--scope", "all", "--concurrency", str(concurrency)],
        "environment": {
            "IMAGEN_DATABASE_URL": database_url,
            "IMAGEN_STORAGE": "local",
            "IMAGEN_LOCAL_STORE_DIR": str(store_dir),
            "IMAGEN_STORE_OWNERS": "hub",
            **(environment or {}),
        },
    }


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
) -> None:
    """Wire imagen-canvas into a JupyterHub config: the pre-spawn hook (chained after one already
    set) and, for `layout="pool"`, the worker pool as a managed service. `database_url` is the admin
    login (it may create roles); it stays in the hub, never in a user's server."""
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
                database_url, store_dir, concurrency=pool_concurrency, python=python, environment=pool_environment
            )
        )
        c.JupyterHub.services = services
