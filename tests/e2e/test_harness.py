"""The browser harness itself, and the widget's fallback when its bundle is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .lab import jupyter, open_notebook, run_all_cells, screenshot

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
