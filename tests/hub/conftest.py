"""Fixtures of the multi-user tests: a password-only cluster, the users' venv, system users."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import USERS, Cluster, ensure_system_user, scram_cluster, users_venv

pytestmark = pytest.mark.hub


@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> None:
    """No in-process Jupyter server here: the hub and its users' servers are subprocesses."""


@pytest.fixture(autouse=True)
def jp_server_cleanup() -> None:
    """See jp_asyncio_loop."""


@pytest.fixture(scope="session")
def system_users() -> tuple[str, ...]:
    for name in USERS:
        ensure_system_user(name, home=True)
    return USERS


@pytest.fixture(scope="session")
def venv(system_users: tuple[str, ...]) -> object:
    return users_venv()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with scram_cluster() as made:
        yield made
