"""The canvas as a user meets it: Chromium driving a real JupyterLab (and Notebook 7) with the imagen
extension, the widget built from js/, real jobs on the local provider. Screenshots of each state go
to build/screenshots/."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from .lab import Server, execute_in_notebook_kernel, jupyter, open_notebook, run_all_cells, screenshot

STATIC = Path(__file__).resolve().parents[2] / "imagen_canvas" / "static" / "canvas.js"
pytestmark = pytest.mark.skipif(not STATIC.exists(), reason="the canvas bundle is not built (pip install -e .)")

# Sockets the page opens to the event stream, so a test can drop them mid-job.
TRACK_SOCKETS = """(() => { const W = window.WebSocket; window.__imagenSockets = [];
  window.WebSocket = class extends W { constructor(...a) { super(...a);
    if (String(a[0]).includes('imagen/api/events')) window.__imagenSockets.push(this); } }; })()"""


@pytest.fixture(scope="module")
def lab(e2e_env: dict[str, str], e2e_dir: Path) -> Iterator[Server]:
    with jupyter("lab", e2e_dir / "notebooks", e2e_env) as server:
        yield server


def canvas_cell(canvas_id: str, setup: str = "") -> list[str]:
    return [f"from imagen_canvas import Canvas\ncanvas = Canvas(canvas_id={canvas_id!r}, height=720)\n{setup}\ncanvas"]


def open_canvas(page: Any, server: Server, setup: str = "") -> tuple[str, Any]:
    """A notebook showing a new canvas; (the notebook's name, the canvas's locator)."""
    canvas_id = str(uuid.uuid4())
    name = server.write_notebook(f"canvas-{canvas_id[:8]}.ipynb", canvas_cell(canvas_id, setup))
    open_notebook(page, server, name)
    run_all_cells(page)
    canvas = page.get_by_test_id("imagen-canvas")
    expect(canvas.get_by_test_id("add-image-node")).to_be_visible(timeout=60_000)
    return name, canvas


def loaded(page: Any, thumb: Any, timeout: float = 20_000) -> None:
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=thumb.element_handle(), timeout=timeout)


def connect(page: Any, source: Any, target: Any) -> None:
    """Drag from the source node's right handle to the target node's left handle."""
    s = source.locator(".react-flow__handle-right").bounding_box()
    t = target.locator(".react-flow__handle-left").bounding_box()
    page.mouse.move(s["x"] + s["width"] / 2, s["y"] + s["height"] / 2)
    page.mouse.down()
    page.mouse.move(t["x"] + t["width"] / 2, t["y"] + t["height"] / 2, steps=12)
    page.mouse.up()


def generate_done(page: Any, node: Any, prompt: str) -> Any:
    node.get_by_test_id("prompt-input").fill(prompt)
    node.get_by_test_id("provider-select").select_option("local")
    node.get_by_test_id("generate-button").click()
    expect(node.get_by_test_id("node-status")).to_have_text("done", timeout=30_000)
    thumb = node.get_by_test_id("node-thumbnail")
    loaded(page, thumb)
    return thumb


def test_generate_shows_pending_running_done_a_thumbnail_the_lightbox_and_history(page: Any, lab: Server) -> None:
    _, canvas = open_canvas(page, lab)
    canvas.get_by_test_id("add-image-node").click()
    node = canvas.get_by_test_id("image-node").last
    thumb = generate_done(page, node, "a red fox in the snow")
    assert thumb.evaluate("i => i.tagName") == "IMG"
    screenshot(page, "canvas-done")
    thumb.click()
    lightbox = page.get_by_test_id("lightbox")
    expect(lightbox).to_be_visible()
    page.wait_for_function(
        "() => { const i = document.querySelector('[data-testid=lightbox-image]'); return i && i.naturalWidth > 0 }"
    )
    screenshot(page, "canvas-lightbox")
    page.keyboard.press("Escape")
    expect(lightbox).to_have_count(0)
    first = node.get_by_test_id("node-thumbnail").get_attribute("src")
    node.get_by_test_id("generate-button").click()
    expect(node.get_by_test_id("history-position")).to_have_text("2 / 2", timeout=10_000)
    expect(node.get_by_test_id("node-status")).to_have_text("done", timeout=30_000)
    loaded(page, node.get_by_test_id("node-thumbnail"))
    node.get_by_test_id("history-prev").click()
    expect(node.get_by_test_id("history-position")).to_have_text("1 / 2")
    expect(node.get_by_test_id("node-thumbnail")).to_have_attribute("src", first)
    node.get_by_test_id("history-next").click()
    expect(node.get_by_test_id("history-position")).to_have_text("2 / 2")


def test_a_running_job_shows_progress_and_cancels(page: Any, lab: Server) -> None:
    _, canvas = open_canvas(
        page, lab, 'canvas.add_image("a slow lighthouse", provider="local", options={"delay_s": 8})'
    )
    node = canvas.get_by_test_id("image-node").first
    node.get_by_test_id("generate-button").click()
    expect(node.get_by_test_id("node-status")).to_have_text("running", timeout=20_000)
    expect(node.get_by_test_id("node-progress")).to_be_visible(timeout=10_000)
    screenshot(page, "canvas-running")
    node.get_by_test_id("cancel-button").click()
    expect(node.get_by_test_id("node-status")).to_have_text("cancelled", timeout=15_000)


def test_one_prompt_connected_to_two_image_nodes_runs_both(page: Any, lab: Server) -> None:
    setup = 'canvas.add_image(provider="local", x=420, y=0)\ncanvas.add_image(provider="local", x=760, y=0)'
    _, canvas = open_canvas(page, lab, setup)
    canvas.get_by_test_id("add-prompt-node").click()
    prompt = canvas.get_by_test_id("prompt-node").first
    prompt.get_by_test_id("prompt-input").fill("a lighthouse at dusk")
    canvas.get_by_test_id("fit-view").click()
    page.wait_for_timeout(400)
    images = canvas.get_by_test_id("image-node")
    connect(page, prompt, images.nth(0))
    connect(page, prompt, images.nth(1))
    prompt.get_by_test_id("prompt-input").press("Control+Enter")
    for i in (0, 1):
        expect(images.nth(i).get_by_test_id("node-status")).to_have_text("done", timeout=30_000)
        loaded(page, images.nth(i).get_by_test_id("node-thumbnail"))
    screenshot(page, "canvas-one-prompt-two-images")


def test_undo_brings_back_a_deleted_node(page: Any, lab: Server) -> None:
    _, canvas = open_canvas(page, lab, 'canvas.add_image("keep me", provider="local")')
    nodes = canvas.get_by_test_id("image-node")
    expect(nodes).to_have_count(1)
    nodes.first.locator(".ic-node-head").click()
    page.keyboard.press("Delete")
    expect(nodes).to_have_count(0)
    page.keyboard.press("Control+z")
    expect(nodes).to_have_count(1)
    expect(nodes.first.get_by_test_id("prompt-input")).to_have_value("keep me")


def test_a_reload_restores_the_canvas_and_its_images(page: Any, lab: Server) -> None:
    _, canvas = open_canvas(page, lab)
    canvas.get_by_test_id("add-image-node").click()
    generate_done(page, canvas.get_by_test_id("image-node").last, "a paper boat")
    canvas.get_by_test_id("add-prompt-node").click()
    page.wait_for_timeout(1500)  # the debounced save
    page.reload()
    from .lab import kernel_ready

    kernel_ready(page)
    run_all_cells(page)
    canvas = page.get_by_test_id("imagen-canvas")
    expect(canvas.get_by_test_id("image-node")).to_have_count(1, timeout=60_000)
    expect(canvas.get_by_test_id("prompt-node")).to_have_count(1)
    loaded(page, canvas.get_by_test_id("node-thumbnail").first)
    expect(canvas.get_by_test_id("image-node").first.get_by_test_id("prompt-input")).to_have_value("a paper boat")
    screenshot(page, "canvas-reloaded")


def test_a_job_still_shows_done_after_the_websocket_is_killed_mid_job(page: Any, lab: Server) -> None:
    page.context.add_init_script(TRACK_SOCKETS)
    _, canvas = open_canvas(page, lab, 'canvas.add_image("slow but sure", provider="local", options={"delay_s": 3})')
    node = canvas.get_by_test_id("image-node").first
    node.get_by_test_id("generate-button").click()
    expect(node.get_by_test_id("node-status")).to_have_text("running", timeout=20_000)
    killed = page.evaluate("() => { const s = window.__imagenSockets; s.forEach(w => w.close()); return s.length; }")
    assert killed >= 1
    expect(node.get_by_test_id("node-status")).to_have_text("done", timeout=30_000)
    loaded(page, node.get_by_test_id("node-thumbnail"))
    assert page.evaluate("() => window.__imagenSockets.length") > killed  # it reconnected


def test_a_hostile_prompt_shows_as_text_and_runs_nothing(page: Any, lab: Server) -> None:
    _, canvas = open_canvas(page, lab)
    page.evaluate("window.pwned = 0")
    canvas.get_by_test_id("add-image-node").click()
    node = canvas.get_by_test_id("image-node").last
    hostile = '<img src=x onerror="window.pwned=1">'
    generate_done(page, node, hostile)
    node.get_by_test_id("node-thumbnail").click()
    expect(page.get_by_test_id("lightbox-prompt")).to_have_text(hostile)
    page.keyboard.press("Escape")
    assert page.evaluate("window.pwned") == 0
    assert page.locator("img[src=x]").count() == 0


def test_the_smoke_flow_in_notebook_7(page: Any, e2e_env: dict[str, str], e2e_dir: Path) -> None:
    with jupyter("notebook", e2e_dir / "notebooks", e2e_env) as notebook:
        _, canvas = open_canvas(page, notebook)
        canvas.get_by_test_id("add-image-node").click()
        generate_done(page, canvas.get_by_test_id("image-node").last, "a red fox in Notebook 7")
        screenshot(page, "notebook7-done")


def test_generate_to_done_through_the_kernel_when_the_extension_is_off(
    page: Any, e2e_env: dict[str, str], e2e_dir: Path
) -> None:
    config = e2e_dir / "no-extension"
    config.mkdir(exist_ok=True)
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"imagen_canvas_server": False}}})
    )
    env = {**e2e_env, "JUPYTER_CONFIG_DIR": str(config)}
    with jupyter("lab", e2e_dir / "notebooks", env) as lab_without:
        status = lab_without.api("api/status")
        assert status is not None
        name, canvas = open_canvas(page, lab_without)
        canvas.get_by_test_id("add-image-node").click()
        thumb = generate_done(page, canvas.get_by_test_id("image-node").last, "a fox through the kernel")
        assert thumb.get_attribute("src").startswith("blob:")  # the bytes came as widget buffers
        screenshot(page, "canvas-kernel-transport")
        said = execute_in_notebook_kernel(lab_without, name, "print(canvas.transport, canvas.status)")
        assert said.split() == ["kernel", "ready"]
    assert os.environ.get("JUPYTER_CONFIG_DIR") != str(config)


def test_python_edits_show_in_an_open_view_and_run_from_it(page: Any, lab: Server) -> None:
    name, canvas = open_canvas(page, lab)
    execute_in_notebook_kernel(
        lab,
        name,
        """
prompt = canvas.add_prompt("a lighthouse on a cliff at dusk", style_modifiers=["oil painting"], x=0, y=160)
left = canvas.add_image(provider="local", x=360, y=0, aspect_ratio="4:3")
right = canvas.add_image(provider="local", x=700, y=0, aspect_ratio="4:3", seed=7)
canvas.connect(prompt, left)
canvas.connect(prompt, right)
""",
    )
    # The view reloads on the save's event: no page reload, no re-run.
    expect(canvas.get_by_test_id("image-node")).to_have_count(2, timeout=10_000)
    expect(canvas.get_by_test_id("prompt-node")).to_have_count(1)
    expect(canvas.locator(".react-flow__edge")).to_have_count(2)
    prompt = canvas.get_by_test_id("prompt-node").first
    expect(prompt.get_by_test_id("prompt-input")).to_have_value("a lighthouse on a cliff at dusk")
    prompt.get_by_test_id("prompt-input").press("Control+Enter")
    images = canvas.get_by_test_id("image-node")
    for i in (0, 1):
        expect(images.nth(i).get_by_test_id("node-status")).to_have_text("done", timeout=30_000)
        loaded(page, images.nth(i).get_by_test_id("node-thumbnail"))
    canvas.get_by_test_id("fit-view").click()
    page.wait_for_timeout(500)
    screenshot(page, "canvas")
    said = execute_in_notebook_kernel(
        lab,
        name,
        "print(sorted(n['data'].get('current_job_id') is not None for n in canvas.nodes if n['type'] == 'image'))",
    )
    assert said.strip() == "[True, True]"  # Python sees what the view did
