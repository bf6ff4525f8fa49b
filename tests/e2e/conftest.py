"""End-to-end fixtures: a database per test module, Chromium for the session, a page per test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..base64_scan import assert_no_base64_images
from ..conftest import _create_database, _drop_database, run_sync, url_for
from .lab import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> None:
    """pytest-jupyter's loop fixture (autouse, session-wide) would close the loop Playwright's sync API
    runs on; these tests start their servers as subprocesses and need none."""


@pytest.fixture(autouse=True)
def jp_server_cleanup() -> None:
    """No in-process Jupyter server to clean up here (see jp_asyncio_loop)."""


@pytest.fixture(scope="module")
def e2e_db(pg_admin_url: str, template_db: str) -> Iterator[str]:
    name = f"imagen_e2e_{uuid.uuid4().hex[:10]}"
    run_sync(lambda: _create_database(pg_admin_url, name, template_db))
    yield (url := url_for(pg_admin_url, name))
    run_sync(lambda: assert_no_base64_images(url))
    run_sync(lambda: _drop_database(pg_admin_url, name))


@pytest.fixture(scope="module")
def e2e_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="imagen-e2e-"))
    (root / "notebooks").mkdir()
    (root / "data").mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def e2e_env(e2e_db: str, e2e_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "IMAGEN_DATABASE_URL": e2e_db,
        "IMAGEN_DATA_DIR": str(e2e_dir / "data"),
        "IMAGEN_POLL_INTERVAL": "0.2",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing browser test leaves a screenshot of the page as it was (build/screenshots/FAILED-…)."""
    outcome = yield
    report = outcome.get_result()
    page = getattr(item, "funcargs", {}).get("page")
    if report.when == "call" and report.failed and page is not None:
        from .lab import screenshot

        try:
            path = screenshot(page, f"FAILED-{item.name}")
            report.sections.append(("screenshot", str(path)))
        except Exception as exc:  # the page may be gone
            report.sections.append(("screenshot", f"none: {exc}"))
