"""Where image bytes live: a backend interface, the local store, and Supabase Storage."""

from __future__ import annotations

from ..config import Settings
from ..errors import ConfigError
from .base import Storage, StoredObject
from .local import LocalStorage, load_signing_key

__all__ = ["LocalStorage", "Storage", "StoredObject", "load_signing_key", "storage_from_settings"]


def storage_from_settings(settings: Settings) -> Storage:
    """The backend IMAGEN_STORAGE names, configured from the environment."""
    if settings.storage == "local":
        return LocalStorage(settings.store_dir, signing_key=load_signing_key(settings.data_dir))
    raise ConfigError(f"IMAGEN_STORAGE={settings.storage!r} is not available in this build; use 'local'")
