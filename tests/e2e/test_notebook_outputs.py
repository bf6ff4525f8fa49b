"""What the notebook API shows in a real JupyterLab: a generation and a sweep gallery whose thumbnails
load in Chromium (and the screenshots the README uses)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .lab import jupyter, open_notebook, run_all_cells, screenshot

CELLS = [
    "from imagen_canvas import generate, sweep",
    'generate("a lighthouse at dusk", seed=3, size="512x320", style_modifiers=["oil painting"])',
    'sweep(["a red fox in the snow", "a lighthouse at dusk"], seeds=4, size="256x256")',
]


def test_a_generation_and_a_sweep_gallery_render_with_every_thumbnail_loaded(
    page: Any, e2e_env: dict[str, str], e2e_dir: Path
) -> None:
    with jupyter("lab", e2e_dir / "notebooks", e2e_env) as lab:
        name = lab.write_notebook("gallery.ipynb", CELLS)
        open_notebook(page, lab, name)
        run_all_cells(page)
        gallery = page.locator(".imagen-gallery")
        gallery.wait_for(timeout=120_000)
        images = gallery.locator("img")
        assert images.count() == 8
        page.wait_for_function(
            "() => [...document.querySelectorAll('.imagen-gallery img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=30_000,
        )
        figure = page.locator(".imagen-generation img")
        assert figure.evaluate("i => i.naturalWidth") == 512
        assert "seed" in page.locator(".imagen-generation").inner_text()
        gallery.scroll_into_view_if_needed()
        screenshot(page, "sweep-gallery")
