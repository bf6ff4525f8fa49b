"""Fixtures of the multi-user tests: a password-only cluster, the users' venv, system users."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import USERS, Cluster, ensure_system_user, scram_cluster, users_venv

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of this folder is a `hub` test (a `pytestmark` in a conftest.py would mark nothing),
    and is skipped without root. Hooks of a conftest see the whole session's items: only ours."""
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.hub)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="needs root: it creates system users and a cluster"))


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
