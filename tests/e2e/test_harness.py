"""The browser harness itself, and the widget's fallback when its bundle is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .lab import BUILD_COMMAND, jupyter, open_notebook, require_bundle, run_all_cells, screenshot

MISSING = """
from imagen_canvas.canvas import Canvas, MISSING_BUNDLE_ESM

class Unbuilt(Canvas):
    _esm = MISSING_BUNDLE_ESM

Unbuilt()
"""


def test_a_canvas_without_its_bundle_says_how_to_build_it_instead_of_a_blank_box(
    page: Any, e2e_env: dict[str, str], e2e_dir: Path
) -> None:
    with jupyter("lab", e2e_dir / "notebooks", e2e_env) as lab:
        name = lab.write_notebook("unbuilt.ipynb", [MISSING])
        open_notebook(page, lab, name)
        run_all_cells(page)
        message = page.locator('[data-testid="imagen-canvas"]')
        message.wait_for(timeout=60_000)
        assert "bundle is not built" in message.inner_text()
        screenshot(page, "missing-bundle")


def test_a_missing_bundle_fails_the_browser_tests_naming_the_build_command(tmp_path: Path) -> None:
    """Not a skip: a failed build must not let the browser tests pass silently in CI."""
    with pytest.raises(BaseException) as raised:  # a skip is an exception too: catch it to fail on it
        require_bundle(tmp_path / "canvas.js")
    assert raised.type is pytest.fail.Exception, f"a missing bundle raises {raised.type.__name__}, not a failure"
    assert BUILD_COMMAND in str(raised.value)
    require_bundle()  # this checkout's bundle is built
