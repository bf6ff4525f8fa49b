"""JupyterHub wiring without a hub: how hub names map to Unix users (TLJH: `jupyter-NAME`), and what
configure() puts in the pool service's environment."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from imagen_canvas_server.hub import configure
from imagen_worker.config import Settings
from imagen_worker.errors import ConfigError
from imagen_worker.users import unix_user_name


def test_hub_names_map_to_unix_users_by_pattern_and_by_tljhs_rule() -> None:
    assert unix_user_name("alice") == "alice"  # LocalProcessSpawner: the hub name is the Unix name
    assert unix_user_name("alice", "jupyter-{name}") == "jupyter-alice"
    assert unix_user_name("alice", "tljh") == "jupyter-alice"
    # TLJH's own cases (tljh/normalize.py's tests): from 26 characters on, truncated plus a hash.
    assert unix_user_name("abcdefghijklmnopq", "tljh") == "jupyter-abcdefghijklmnopq"
    assert unix_user_name("abcdefghijklmnopqr", "tljh") == "jupyter-abcdefghijklmnopqr-e375e"
    long_name = "aelie9sohjeequ9iemeipuimuoshahz4aitugiuteeg4ohioh5yuiha6aei7te5z"
    assert unix_user_name(long_name, "tljh") == "jupyter-aelie9sohjeequ9iem-4b726"
    for bad in ("jupyter-", "{user}", "{name}-{name}", "x{name}{0}"):
        with pytest.raises(ConfigError, match="IMAGEN_HUB_UNIX_USER"):
            unix_user_name("alice", bad)
    with pytest.raises(ConfigError, match="IMAGEN_HUB_UNIX_USER"):
        Settings.from_env({"IMAGEN_HUB_UNIX_USER": "jupyter-"})
    assert Settings.from_env({"IMAGEN_HUB_UNIX_USER": "jupyter-{name}"}).hub_unix_user == "jupyter-{name}"
    assert Settings.from_env({}).hub_unix_user == "{name}"


def test_configure_hands_the_pool_its_own_login_and_the_unix_user_pattern() -> None:
    c = Config()
    pool_url = "postgresql://imagen_pool_0123456789ab:pw@db.example:5432/imagen"
    configure(
        c,
        database_url="postgresql://imagen_admin:admin-secret@db.example:5432/imagen",
        layout="pool",
        store_dir="/srv/imagen/store",
        unix_user="tljh",
        pool_database_url=pool_url,
    )
    (service,) = c.JupyterHub.services
    assert service["environment"]["IMAGEN_DATABASE_URL"] == pool_url
    assert service["environment"]["IMAGEN_HUB_UNIX_USER"] == "tljh"
    assert "admin-secret" not in repr(service)
    with pytest.raises(ConfigError):
        configure(Config(), database_url="postgresql://x@y/z", layout="pool", store_dir="/s", unix_user="jupyter-")
