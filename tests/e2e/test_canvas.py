"""The canvas as a user meets it: Chromium driving a real JupyterLab (and Notebook 7) with the imagen
extension, the widget built from js/, real jobs on the local provider. Screenshots of each state go
to build/screenshots/."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from .lab import (
    Server,
    execute_in_notebook_kernel,
    jupyter,
    kernel_ready,
    open_notebook,
    require_bundle,
    run_all_cells,
    screenshot,
)


@pytest.fixture(autouse=True, scope="module")
def bundle_built() -> None:
    """A missing bundle fails every test here (never a silent skip), naming the build command."""
    require_bundle()


@pytest.fixture(scope="module")
def lab(e2e_env: dict[str, str], e2e_dir: Path) -> Iterator[Server]:
    with jupyter("lab", e2e_dir / "notebooks", e2e_env) as server:
        yield server


def canvas_cell(canvas_id: str, setup: str = "") -> list[str]:
    return [f"from imagen_canvas import Canvas\ncanvas = Canvas(canvas_id={canvas_id!r}, height=720)\n{setup}\ncanvas"]


def open_canvas(page: Any, server: Server, setup: str = "", canvas_id: str | None = None) -> tuple[str, Any]:
    """A notebook showing a new canvas; (the notebook's name, the canvas's locator)."""
    canvas_id = canvas_id or str(uuid.uuid4())
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


EVENTS_SOCKET = re.compile(r"/imagen/api/events(\?|$)")
# GET api/jobs (a canvas's jobs) and GET api/jobs/{id}: the REST reads that could also tell a view a job is done.
JOB_READS = re.compile(r"/imagen/api/jobs(/[0-9a-f-]{36})?(\?|$)")


@dataclass
class EventsGate:
    """Every `imagen/api/events` socket of the page, routed through Playwright: proxied to the server while
    the gate is open (recording each socket's URL and what the server sent on it); while it is closed, the
    live sockets are dropped and every reconnect is refused at once, so the page hears nothing."""

    page: Any
    open: bool = True
    live: list[Any] = field(default_factory=list)
    # (the socket's URL, the messages the server sent on it), one per proxied socket, oldest first.
    sockets: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    refused: int = 0

    def __post_init__(self) -> None:
        self.page.route_web_socket(EVENTS_SOCKET, self._route)

    def _route(self, ws: Any) -> None:
        if not self.open:
            self.refused += 1
            ws.close(code=4503, reason="held down by the test")
            return
        received: list[dict[str, Any]] = []
        self.sockets.append((ws.url, received))
        server = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            if isinstance(message, str):
                received.append(json.loads(message))
            ws.send(message)

        server.on_message(from_server)
        ws.on_message(lambda message: server.send(message))
        self.live.append(ws)

    def kill(self) -> int:
        """Close the gate and drop every live socket; how many were dropped."""
        self.open = False
        live, self.live = self.live, []
        for ws in live:
            ws.close(code=4001, reason="killed by the test")
        return len(live)


@dataclass
class HeldJobReads:
    """The page's REST reads of jobs are held (not answered) while `holding`, then let through."""

    page: Any
    holding: bool = True
    held: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.route(lambda url: bool(JOB_READS.search(url)), self._route)

    def _route(self, route: Any) -> None:
        if self.holding and route.request.method == "GET":
            self.held.append(route)
        else:
            route.continue_()

    def release(self) -> int:
        self.holding = False
        held, self.held = self.held, []
        for route in held:
            route.continue_()
        return len(held)


def wait_for_job(page: Any, server: Server, canvas_id: str, status: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll the server (not through the page) until the canvas's one job has `status`; the job."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = server.api(f"imagen/api/jobs?canvas_id={canvas_id}")["jobs"]
        if len(jobs) == 1 and jobs[0]["status"] == status:
            return dict(jobs[0])
        assert time.monotonic() < deadline, f"the job never became {status}: {jobs}"
        page.wait_for_timeout(100)  # lets Playwright run the route handlers meanwhile


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
    screenshot(page, "canvas-cancelled")


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
    screenshot(page, "canvas-undo")


# In the page before any of the view's own listeners: the save state the toolbar shows when the page starts
# to unload (`beforeunload` comes first, then `pagehide`), kept across the reload.
RECORD_SYNC_AT_UNLOAD = """addEventListener('beforeunload', () => { const s = document.querySelector(
  '[data-testid=sync-state]'); sessionStorage.setItem('imagenSyncAtUnload', s ? s.className : 'none'); });"""


def test_a_reload_right_after_an_edit_keeps_the_edit_and_restores_the_images(page: Any, lab: Server) -> None:
    page.context.add_init_script(RECORD_SYNC_AT_UNLOAD)
    _, canvas = open_canvas(page, lab)
    canvas.get_by_test_id("add-image-node").click()
    generate_done(page, canvas.get_by_test_id("image-node").last, "a paper boat")
    expect(canvas.get_by_test_id("sync-state")).to_have_class(re.compile(r"\bic-sync-saved\b"), timeout=10_000)
    # The edits and the reload follow each other at once: the debounced save (250 ms) has not run when
    # the page unloads, so only the view's flush on close can save them.
    canvas.get_by_test_id("add-prompt-node").click()
    canvas.get_by_test_id("prompt-node").first.get_by_test_id("prompt-input").fill("typed right before the reload")
    page.reload()
    kernel_ready(page)
    assert "ic-sync-pending" in page.evaluate("sessionStorage.getItem('imagenSyncAtUnload')"), (
        "the edit was saved before the page unloaded: this test no longer exercises the flush on close"
    )
    run_all_cells(page)
    canvas = page.get_by_test_id("imagen-canvas")
    expect(canvas.get_by_test_id("image-node")).to_have_count(1, timeout=60_000)
    expect(canvas.get_by_test_id("prompt-node")).to_have_count(1)
    prompt = canvas.get_by_test_id("prompt-node").first.get_by_test_id("prompt-input")
    expect(prompt).to_have_value("typed right before the reload")
    loaded(page, canvas.get_by_test_id("node-thumbnail").first)
    expect(canvas.get_by_test_id("image-node").first.get_by_test_id("prompt-input")).to_have_value("a paper boat")
    screenshot(page, "canvas-reloaded")


def test_a_job_still_shows_done_after_the_websocket_is_killed_mid_job(page: Any, lab: Server) -> None:
    """The socket stays down until the job is done in the database, and the page's REST reads of jobs are
    held meanwhile, so only the resumed socket's replay (`since`) can tell the view the job is done."""
    gate = EventsGate(page)
    canvas_id = str(uuid.uuid4())
    setup = 'canvas.add_image("slow but sure", provider="local", options={"delay_s": 3})'
    _, canvas = open_canvas(page, lab, setup, canvas_id=canvas_id)
    node = canvas.get_by_test_id("image-node").first
    node.get_by_test_id("generate-button").click()
    expect(node.get_by_test_id("node-status")).to_have_text("running", timeout=20_000)
    reads = HeldJobReads(page)
    assert gate.kill() >= 1
    job = wait_for_job(page, lab, canvas_id, "done")
    page.wait_for_timeout(500)
    expect(node.get_by_test_id("node-status")).to_have_text("running")  # nothing told the view yet
    assert gate.refused >= 1  # the view tried to reconnect while the gate was closed
    gate.open = True
    expect(node.get_by_test_id("node-status")).to_have_text("done", timeout=30_000)
    # What told it: the socket that resumed from the last cursor, whose replay carried the job's `done`.
    url, received = gate.sockets[-1]
    assert "since=" in url, url
    assert any(m.get("job_id") == job["id"] and m.get("status") == "done" for m in received)
    reads.release()  # the view's fetch of the finished job (its image) goes through now
    loaded(page, node.get_by_test_id("node-thumbnail"))
    screenshot(page, "canvas-after-socket-kill")


def test_a_hostile_prompt_shows_as_text_and_runs_nothing(page: Any, lab: Server) -> None:
    _, canvas = open_canvas(page, lab)
    page.evaluate("window.pwned = 0")
    canvas.get_by_test_id("add-image-node").click()
    node = canvas.get_by_test_id("image-node").last
    hostile = '<img src=x onerror="window.pwned=1">'
    generate_done(page, node, hostile)
    node.get_by_test_id("node-thumbnail").click()
    expect(page.get_by_test_id("lightbox-prompt")).to_have_text(hostile)
    screenshot(page, "canvas-hostile-prompt")
    page.keyboard.press("Escape")
    assert page.evaluate("window.pwned") == 0
    assert page.locator("img[src=x]").count() == 0


def test_the_smoke_flow_in_notebook_7(page: Any, e2e_env: dict[str, str], e2e_dir: Path) -> None:
    with jupyter("notebook", e2e_dir / "notebooks", e2e_env) as notebook:
        _, canvas = open_canvas(page, notebook)
        canvas.get_by_test_id("add-image-node").click()
        node = canvas.get_by_test_id("image-node").last
        generate_done(page, node, "a red fox in Notebook 7")
        screenshot(page, "notebook7-done")
        node.get_by_test_id("node-thumbnail").click()
        lightbox = page.get_by_test_id("lightbox")
        expect(lightbox).to_be_visible()
        page.wait_for_function(
            "() => { const i = document.querySelector('[data-testid=lightbox-image]'); return i && i.naturalWidth > 0 }"
        )
        screenshot(page, "notebook7-lightbox")
        page.keyboard.press("Escape")
        expect(lightbox).to_have_count(0)
        node.get_by_test_id("generate-button").click()
        expect(node.get_by_test_id("history-position")).to_have_text("2 / 2", timeout=10_000)
        expect(node.get_by_test_id("node-status")).to_have_text("done", timeout=30_000)
        node.get_by_test_id("history-prev").click()
        expect(node.get_by_test_id("history-position")).to_have_text("1 / 2")


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
        with pytest.raises(urllib.error.HTTPError) as off:
            lab_without.api("imagen/api/health")
        assert off.value.code == 404  # the extension really is off in this server
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


CANVAS_SAVE = re.compile(r"/imagen/api/canvases/[0-9a-f-]{36}(\?|$)")


@dataclass
class SimultaneousSaves:
    """While armed, each page's next canvas save (PUT) is held until every page has sent one; then all go at
    once, each based on the same stored version, so all but one are refused (409) and must merge. Records the
    status of every save answered."""

    pages: list[Any]
    armed: bool = False
    held: dict[int, Any] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i, page in enumerate(self.pages):
            page.route(CANVAS_SAVE, lambda route, i=i: self._route(i, route))
            page.on("response", self._response)

    def _route(self, i: int, route: Any) -> None:
        if route.request.method != "PUT" or not self.armed or i in self.held:
            route.continue_()
            return
        self.held[i] = route
        if len(self.held) == len(self.pages):
            self.armed = False
            for held in self.held.values():
                held.continue_()

    def _response(self, response: Any) -> None:
        if response.request.method == "PUT" and CANVAS_SAVE.search(response.url):
            self.statuses.append(response.status)


def flow_position(page: Any, node_id: str) -> str:
    """The node's place on the canvas (React Flow's transform, in flow coordinates: pan and zoom apart)."""
    return str(page.locator(f'.react-flow__node[data-id="{node_id}"]').evaluate("el => el.style.transform"))


def test_two_views_of_one_canvas_converge_within_a_second_and_keep_each_others_edits(
    page: Any, browser: Any, lab: Server
) -> None:
    """Two tabs (each its own browser context, notebook, kernel and event socket) show Canvas(canvas_id=same).
    An edit in one (a node added, a node moved, a prompt typed) shows in the other within a second; edits of
    different nodes made in both at the same moment both survive, in each view and in the database."""
    canvas_id = str(uuid.uuid4())
    setup = (
        'canvas.add_image("left", provider="local", x=0, y=0)\ncanvas.add_image("right", provider="local", x=420, y=0)'
    )
    first = lab.write_notebook(f"view-a-{canvas_id[:8]}.ipynb", canvas_cell(canvas_id, setup))
    second = lab.write_notebook(f"view-b-{canvas_id[:8]}.ipynb", canvas_cell(canvas_id))
    other = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        views = []
        for tab, name in ((page, first), (other.new_page(), second)):
            open_notebook(tab, lab, name)
            run_all_cells(tab)
            canvas = tab.get_by_test_id("imagen-canvas")
            expect(canvas.get_by_test_id("image-node")).to_have_count(2, timeout=60_000)
            expect(canvas.get_by_test_id("sync-state")).to_have_class(re.compile(r"\bic-sync-saved\b"), timeout=10_000)
            views.append((tab, canvas))
        (a, in_a), (b, in_b) = views
        assert a.evaluate("document.visibilityState") == b.evaluate("document.visibilityState") == "visible"
        left, right = (in_a.get_by_test_id("image-node").nth(i).get_attribute("data-node-id") for i in (0, 1))
        assert left and right

        def node(canvas: Any, node_id: str) -> Any:
            return canvas.locator(f'[data-testid=image-node][data-node-id="{node_id}"]')

        # A node added in A shows in B.
        in_a.get_by_test_id("add-prompt-node").click()
        expect(in_b.get_by_test_id("prompt-node")).to_have_count(1, timeout=1_000)
        # A node moved in B moves in A.
        before = flow_position(a, left)
        head = node(in_b, left).locator(".ic-node-head").bounding_box()
        b.mouse.move(head["x"] + 40, head["y"] + head["height"] / 2)
        b.mouse.down()
        b.mouse.move(head["x"] + 160, head["y"] + 120, steps=8)
        b.mouse.up()
        moved = flow_position(b, left)
        assert moved != before
        a.wait_for_function(
            "([id, want]) => document.querySelector(`.react-flow__node[data-id='${id}']`)?.style.transform === want",
            arg=[left, moved],
            timeout=1_000,
        )
        # A prompt typed in A shows in B.
        node(in_a, left).get_by_test_id("prompt-input").fill("a fox typed in A")
        expect(node(in_b, left).get_by_test_id("prompt-input")).to_have_value("a fox typed in A", timeout=1_000)
        for _, canvas in views:
            expect(canvas.get_by_test_id("sync-state")).to_have_class(re.compile(r"\bic-sync-saved\b"), timeout=5_000)

        # Different nodes edited in both at the same moment: both saves leave with the same base version.
        saves = SimultaneousSaves([a, b], armed=True)
        node(in_a, left).get_by_test_id("prompt-input").fill("left, edited in A")
        node(in_b, right).get_by_test_id("prompt-input").fill("right, edited in B")
        deadline = time.monotonic() + 1.0  # a second from the later edit, for all four to show in both views
        for _, canvas in views:
            for node_id, text in ((left, "left, edited in A"), (right, "right, edited in B")):
                remaining = max(1.0, (deadline - time.monotonic()) * 1000)
                expect(node(canvas, node_id).get_by_test_id("prompt-input")).to_have_value(text, timeout=remaining)
        assert not saves.armed and 409 in saves.statuses, saves.statuses  # one of them really had to merge
        for _, canvas in views:
            expect(canvas.get_by_test_id("sync-state")).to_have_class(re.compile(r"\bic-sync-saved\b"), timeout=5_000)
        stored = lab.api(f"imagen/api/canvases/{canvas_id}")
        prompts = {n["id"]: n["data"].get("prompt") for n in stored["nodes"] if n["type"] == "image"}
        assert prompts == {left: "left, edited in A", right: "right, edited in B"}
        assert [n["type"] for n in stored["nodes"]].count("prompt") == 1
        assert flow_position(a, left) == moved
        screenshot(b, "canvas-second-view")
    finally:
        other.close()
