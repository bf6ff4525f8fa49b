"""Where image bytes live: a backend interface, the local store, and Supabase Storage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import Settings
from ..errors import ConfigError
from .base import Storage, StoredObject
from .local import LocalStorage, load_signing_key

if TYPE_CHECKING:
    from .supabase import SupabaseStorage

__all__ = [
    "LocalStorage",
    "Storage",
    "StoredObject",
    "SupabaseStorage",
    "load_signing_key",
    "storage_from_settings",
]


def __getattr__(name: str) -> object:
    # SupabaseStorage needs the optional `supabase` extra; import it only when asked for.
    if name == "SupabaseStorage":
        from .supabase import SupabaseStorage

        return SupabaseStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def storage_from_settings(settings: Settings) -> Storage:
    """The backend IMAGEN_STORAGE names, configured from the environment."""
    if settings.storage == "local":
        owner_uids = None
        if settings.store_owners == "hub":
            if not settings.database_url:
                raise ConfigError("IMAGEN_STORE_OWNERS=hub needs IMAGEN_DATABASE_URL (the hub's database)")
            from ..users import HubStoreOwners

            owner_uids = HubStoreOwners(settings.database_url, settings.hub_unix_user)
        return LocalStorage(
            settings.store_dir,
            bucket=settings.bucket,
            signing_key=load_signing_key(settings.data_dir),
            owner_uids=owner_uids,
        )
    if settings.storage == "supabase":
        if not settings.supabase_url:
            raise ConfigError("SUPABASE_URL is not set; IMAGEN_STORAGE=supabase needs your project URL")
        if not settings.supabase_service_role_key:
            raise ConfigError(
                "SUPABASE_SERVICE_ROLE_KEY is not set; IMAGEN_STORAGE=supabase needs the service_role key"
            )
        try:
            from .supabase import SupabaseStorage
        except ImportError as exc:
            raise ConfigError(
                f"IMAGEN_STORAGE=supabase needs the Supabase client ({exc.name or exc}); "
                "install it with: pip install 'imagen-worker[supabase]'"
            ) from None
        return SupabaseStorage(
            settings.supabase_url,
            settings.supabase_service_role_key,
            bucket=settings.bucket,
            public=settings.bucket_public,
        )
    raise ConfigError(f"IMAGEN_STORAGE={settings.storage!r} is not a storage backend; use 'local' or 'supabase'")
