"""Settings from the environment: one name per setting, documented in docs/configuration.md."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError


def default_data_dir() -> Path:
    """Where the embedded database and the local image store live unless configured."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "imagen-canvas"


def _float(env: dict[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number; set it to a number of seconds such as {default}") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} is below the minimum {minimum}")
    return value


def _int(env: dict[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number; set it to a whole number such as {default}") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} is below the minimum {minimum}")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a yes/no value; set it to true or false")


@dataclass(frozen=True)
class Settings:
    """Runtime settings. `from_env()` reads the IMAGEN_* variables; CLI flags override them."""

    database_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    storage: str = "local"
    local_store_dir: Path | None = None
    concurrency: int = 8
    prefetch: int = 0
    poll_interval: float = 5.0
    lease_seconds: float = 30.0
    job_timeout: float = 300.0
    shutdown_grace: float = 30.0
    supabase_url: str | None = None
    supabase_service_role_key: str | None = field(default=None, repr=False)
    bucket: str = "images"
    bucket_public: bool = False
    # "hub": the local store hands each owner's folder to that owner's Unix user (a shared pool
    # under JupyterHub, ADR 0008); "": files belong to the writer.
    store_owners: str = ""
    # With store_owners "hub": the Unix user of a hub user, `{name}` replaced by the hub name, or
    # "tljh" (imagen_worker.users.unix_user_name).
    hub_unix_user: str = "{name}"

    @property
    def store_dir(self) -> Path:
        return self.local_store_dir or (self.data_dir / "store")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        storage = env.get("IMAGEN_STORAGE", "local") or "local"
        if storage not in ("local", "supabase"):
            raise ConfigError(f"IMAGEN_STORAGE={storage!r} is not a storage backend; use 'local' or 'supabase'")
        data_dir = Path(env["IMAGEN_DATA_DIR"]).expanduser() if env.get("IMAGEN_DATA_DIR") else default_data_dir()
        store = env.get("IMAGEN_LOCAL_STORE_DIR")
        supabase_url = (env.get("SUPABASE_URL") or "").strip() or None
        service_role_key = (env.get("SUPABASE_SERVICE_ROLE_KEY") or "").strip() or None
        if storage == "supabase":
            if supabase_url is None:
                raise ConfigError(
                    "SUPABASE_URL is not set; IMAGEN_STORAGE=supabase needs your project URL "
                    "(https://<project-ref>.supabase.co)"
                )
            if service_role_key is None:
                raise ConfigError(
                    "SUPABASE_SERVICE_ROLE_KEY is not set; IMAGEN_STORAGE=supabase needs the project's "
                    "service_role key (Project Settings → API)"
                )
        if supabase_url is not None and not supabase_url.startswith(("https://", "http://")):
            raise ConfigError(
                f"SUPABASE_URL={supabase_url!r} is not an http(s) URL; use https://<project-ref>.supabase.co"
            )
        store_owners = (env.get("IMAGEN_STORE_OWNERS") or "").strip()
        if store_owners not in ("", "hub"):
            raise ConfigError(f"IMAGEN_STORE_OWNERS={store_owners!r} must be 'hub' or unset")
        hub_unix_user = (env.get("IMAGEN_HUB_UNIX_USER") or "").strip() or "{name}"
        from .users import check_unix_user_pattern

        check_unix_user_pattern(hub_unix_user)
        bucket = (env.get("IMAGEN_BUCKET") or "").strip() or "images"
        if "/" in bucket:
            raise ConfigError(f"IMAGEN_BUCKET={bucket!r} is not a bucket name; it must not contain '/'")
        return cls(
            database_url=env.get("IMAGEN_DATABASE_URL") or None,
            data_dir=data_dir,
            storage=storage,
            local_store_dir=Path(store).expanduser() if store else None,
            concurrency=_int(env, "IMAGEN_WORKER_CONCURRENCY", 8, minimum=1),
            prefetch=_int(env, "IMAGEN_WORKER_PREFETCH", 0, minimum=0),
            poll_interval=_float(env, "IMAGEN_POLL_INTERVAL", 5.0, minimum=0.05),
            lease_seconds=_float(env, "IMAGEN_LEASE_SECONDS", 30.0, minimum=1.0),
            job_timeout=_float(env, "IMAGEN_JOB_TIMEOUT", 300.0, minimum=0.1),
            shutdown_grace=_float(env, "IMAGEN_SHUTDOWN_GRACE", 30.0, minimum=0.0),
            supabase_url=supabase_url,
            supabase_service_role_key=service_role_key,
            bucket=bucket,
            bucket_public=_bool(env, "IMAGEN_BUCKET_PUBLIC", False),
            store_owners=store_owners,
            hub_unix_user=hub_unix_user,
        )
