"""The canvas widget: an anywidget whose view (React Flow, built from js/) holds prompt and image nodes.

The view talks to the server extension directly where the page has it, and otherwise to this
object through widget custom messages (the kernel transport, docs/api.md): requests are run by the
same route table as the REST API, on the kernel's runtime, and the owner's events are forwarded.
Nodes, edges and images never travel as widget state; Python reads and edits the canvas through the
service (`canvas.nodes`, `canvas.add_image(...)`), and every view reloads on the save's event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import re
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from imagen_worker.errors import InvalidField, NotFound, VersionConflict
from imagen_worker.service import Request, StreamClosed
from imagen_worker.service.cursor import Cursor
from imagen_worker.service.generate import needed_graph

from .outbox import Outbox
from .runtime import Notices, Runtime, runtime

log = logging.getLogger("imagen.canvas")

STATIC = Path(__file__).parent / "static"
BUNDLE = STATIC / "canvas.js"
STYLES = STATIC / "canvas.css"
# Shown instead of a blank box when the package was installed without its front-end bundle.
MISSING_BUNDLE_ESM = """
export default {
  render({ el }) {
    const box = document.createElement("div");
    box.setAttribute("data-testid", "imagen-canvas");
    box.style.cssText = "padding:16px;border:1px solid var(--jp-border-color1,#ccc);border-radius:6px;" +
      "font-family:var(--jp-ui-font-family,sans-serif);color:var(--jp-ui-font-color1,#333)";
    box.textContent = "The imagen canvas bundle is not built: reinstall imagen-canvas from a source " +
      "checkout with Node.js available (pip install -e .), or run `npm ci && npm run build` in js/.";
    el.appendChild(box);
  },
};
"""
TERMINAL = ("done", "failed", "cancelled")
# The kernel-transport requests that queue jobs: `POST jobs` and a node's Generate (docs/api.md).
_GENERATE = re.compile(r"^canvases/[^/]+/nodes/(?P<node>[^/]+)/generate$")


class _OpenSaved:
    """`Canvas.open(canvas_id)` opens a saved canvas; on an instance, `open()` stays ipywidgets' own
    (it opens the widget's comm, and ipywidgets calls it from `__init__`)."""

    def __get__(self, obj: Any, owner: type[Canvas]) -> Callable[..., Any]:
        if obj is None:
            return functools.partial(_open_saved, owner)
        return functools.partial(anywidget.AnyWidget.open, obj)


def _open_saved(cls: type[Canvas], canvas_id: str | uuid.UUID, height: int = 600) -> Canvas:
    """The saved canvas with this id (NotFound if there is none)."""
    rt = runtime()
    rt.call(lambda: _get_canvas(rt, str(canvas_id)))
    return cls(canvas_id, height=height)


class Canvas(anywidget.AnyWidget):
    """`Canvas(canvas_id=None, name=None)`: a new canvas, or the saved one with that id."""

    _esm = BUNDLE if BUNDLE.is_file() else MISSING_BUNDLE_ESM
    _css = STYLES if STYLES.is_file() else ""

    canvas_id = traitlets.Unicode("").tag(sync=True)
    height = traitlets.Int(600).tag(sync=True)
    transport = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)

    def __init__(self, canvas_id: str | uuid.UUID | None = None, name: str | None = None, height: int = 600) -> None:
        self._rt: Runtime = runtime()
        self._views_ready = False
        self._outbox = Outbox()
        self._forwarding: Any = None
        self._callbacks: list[Callable[[dict[str, Any]], None]] = []
        try:
            self._main_loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._main_loop = None
        cid = str(canvas_id or uuid.uuid4())
        self._rt.call(lambda: self._ensure_exists(cid, name))
        super().__init__(canvas_id=cid, height=height)
        self.on_msg(self._on_custom_message)

    open = _OpenSaved()

    async def _ensure_exists(self, canvas_id: str, name: str | None) -> None:
        service = self._rt.service
        assert service is not None
        try:
            await service.get_canvas(self._rt.owner, canvas_id)
        except NotFound:
            with contextlib.suppress(VersionConflict):
                await service.save_canvas(
                    self._rt.owner, canvas_id, {"version": 0, "name": name, "nodes": [], "edges": []}
                )

    # -- reading and editing from Python -------------------------------------------------------

    @property
    def nodes(self) -> list[dict[str, Any]]:
        """The canvas's nodes as saved now (browser edits included once the view has saved them)."""
        return list(self._rt.call(lambda: _get_canvas(self._rt, self.canvas_id))["nodes"])

    @property
    def edges(self) -> list[dict[str, Any]]:
        return list(self._rt.call(lambda: _get_canvas(self._rt, self.canvas_id))["edges"])

    @property
    def name(self) -> str:
        return str(self._rt.call(lambda: _get_canvas(self._rt, self.canvas_id))["name"])

    def add_prompt(
        self, text: str, *, style_modifiers: list[str] | None = None, x: float | None = None, y: float | None = None
    ) -> str:
        """Add a prompt node; returns its id."""
        data = {"text": text, "style_modifiers": list(style_modifiers or [])}
        return self._add_node("prompt", data, x, y)

    def add_image(
        self,
        prompt: str = "",
        *,
        provider: str | None = None,
        model: str | None = None,
        x: float | None = None,
        y: float | None = None,
        variants: int = 1,
        options: dict[str, Any] | None = None,
        **spec: Any,
    ) -> str:
        """Add an image node (its own prompt, provider, model, spec fields such as size, seed, quality,
        negative_prompt, and provider `options` such as local's delay_s); returns its id."""
        if not 1 <= variants <= 4:
            raise InvalidField("variants: must be 1 to 4", field="variants")
        unknown = set(spec) - {"size", "aspect_ratio", "quality", "seed", "negative_prompt"}
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidField(
                f"{name}: is not an image node field; use size, aspect_ratio, quality, seed, negative_prompt",
                field=name,
            )
        provider, model = self._provider_and_model(provider, model)
        data: dict[str, Any] = {
            "prompt": prompt,
            "provider": provider,
            "model": model,
            "variants": variants,
            "seed_locked": spec.get("seed") is not None,
            "current_job_id": None,
            "options": options or None,
            **spec,
        }
        return self._add_node("image", data, x, y)

    def _provider_and_model(self, provider: str | None, model: str | None) -> tuple[str | None, str | None]:
        """The provider (the configured default when None) and its model (the provider's default when
        None), as a node the view shows stores them; left unset where the provider is unknown here."""
        from imagen_worker.errors import SpecError

        service = self._rt.service
        name = provider or (service.config.default_provider if service is not None else None)
        if name is None or model is not None or service is None:
            return name, model
        try:
            return name, service.providers.get(name).default_model
        except SpecError:
            return name, None

    def connect(self, source: str, target: str) -> str:
        """Join two nodes: prompt → image gives the image its prompt; image → image refines from the
        source's current image. Returns the edge's id."""
        edge_id = f"e-{source}-{target}"

        def change(canvas: dict[str, Any]) -> None:
            ids = {n["id"] for n in canvas["nodes"]}
            for end, node_id in (("source", source), ("target", target)):
                if node_id not in ids:
                    raise InvalidField(f"{end}: no node {node_id!r} on this canvas", field=end)
            if not any(e["id"] == edge_id for e in canvas["edges"]):
                canvas["edges"].append(
                    {"id": edge_id, "source": source, "target": target, "source_handle": None, "target_handle": None}
                )

        self._change(change)
        return edge_id

    def _add_node(self, kind: str, data: dict[str, Any], x: float | None, y: float | None) -> str:
        node_id = f"{kind[0]}{uuid.uuid4().hex[:8]}"

        def change(canvas: dict[str, Any]) -> None:
            nodes = canvas["nodes"]
            px = x if x is not None else (max((n["position_x"] for n in nodes), default=-320.0) + 320.0)
            py = y if y is not None else 0.0
            nodes.append(
                {
                    "id": node_id,
                    "type": kind,
                    "position_x": px,
                    "position_y": py,
                    "data": {k: v for k, v in data.items() if v is not None or k == "current_job_id"},
                }
            )

        self._change(change)
        return node_id

    def _change(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        return self._rt.call(lambda: self._amend(change))

    async def _amend(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Load, change and save the canvas; a concurrent save (another view's) is merged by retrying."""
        service = self._rt.service
        assert service is not None
        for _ in range(10):
            canvas = await service.get_canvas(self._rt.owner, self.canvas_id)
            change(canvas)
            body = {"version": canvas["version"], "nodes": canvas["nodes"], "edges": canvas["edges"]}
            try:
                return (await service.save_canvas(self._rt.owner, self.canvas_id, body))[1]
            except VersionConflict:
                continue
        raise VersionConflict("version: the canvas kept changing while saving; try again", field="version")

    # -- generating ----------------------------------------------------------------------------

    def generate(self, node: str | None = None) -> list[dict[str, Any]]:
        """Queue the image node `node` (every image node when None) as the view's Generate does, through
        the same service operation (`Service.generate_node`): one job per variant, its prompt from the
        connected prompt nodes, refining from a connected image node's current image. Returns the jobs."""
        notices = Notices()
        try:
            return self._rt.call(lambda: self._generate(node, notices.said))
        finally:
            notices.show()

    async def _generate(self, node: str | None, said: list[str] | None = None) -> list[dict[str, Any]]:
        rt = self._rt
        service = rt.service
        assert service is not None
        canvas = await service.get_canvas(rt.owner, self.canvas_id)
        targets = [n for n in canvas["nodes"] if n["type"] == "image" and (node is None or n["id"] == node)]
        if node is not None and not targets:
            raise InvalidField(f"node: no image node {node!r} on this canvas", field="node")
        jobs: list[dict[str, Any]] = []
        current: dict[str, str] = {}
        for target in targets:
            await rt.ensure_worker(_provider_named(target["data"]), said)
            graph = needed_graph(canvas["nodes"], canvas["edges"], target["id"])
            made = (await service.generate_node(rt.owner, self.canvas_id, target["id"], graph))["jobs"]
            jobs += made
            current[target["id"]] = made[0]["id"]

        def point(c: dict[str, Any]) -> None:
            for n in c["nodes"]:
                if n["id"] in current:
                    n["data"]["current_job_id"] = current[n["id"]]

        await self._amend(point)
        return jobs

    def on_complete(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call `callback(job)` whenever a job of this canvas finishes (done, failed or cancelled)."""
        self._callbacks.append(callback)
        self._start_forwarding()

    def images(self, node: str) -> list[Any]:
        """The PIL images of the node's current generation (its variants), done ones only."""
        from PIL import Image

        async def go() -> list[bytes]:
            service = self._rt.service
            assert service is not None
            canvas = await service.get_canvas(self._rt.owner, self.canvas_id)
            found = [n for n in canvas["nodes"] if n["id"] == node]
            if not found:
                raise InvalidField(f"node: no node {node!r} on this canvas", field="node")
            job_id = found[0]["data"].get("current_job_id")
            if not job_id:
                return []
            job = await service.get_job(self._rt.owner, job_id)
            query = {"canvas_id": self.canvas_id, "node_id": node, "status": "done", "limit": "4"}
            if job.get("group_id"):
                query["group_id"] = job["group_id"]
            page = await service.list_jobs(self._rt.owner, query)
            out = []
            for j in reversed(page["jobs"]):
                _, data = await service.image_content(self._rt.owner, j["image_id"])
                out.append(data)
            return out

        result = []
        for data in self._rt.call(go):
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                result.append(img.copy())
        return result

    # -- the kernel transport ------------------------------------------------------------------

    def _on_custom_message(self, _widget: Any, content: dict[str, Any], buffers: list[bytes]) -> None:
        kind = content.get("type")
        if kind == "ready":
            self._views_ready = True
            for message, bufs in self._outbox.drain():
                self.send(message, bufs)
            self._start_forwarding()
        elif kind == "request":
            future = self._rt.submit(lambda: self._handle_request(content))
            future.add_done_callback(lambda f: self._post(*_result_or_error(f, content)))

    async def _handle_request(self, content: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        rt = self._rt
        assert rt.router is not None
        method = str(content.get("method") or "GET").upper()
        # As the server extension's REST handler has it: path segments percent-decoded (a node id).
        path = urllib.parse.unquote(str(content.get("path") or ""))
        body = content.get("body")
        queues, provider = _queued_provider(method, path, body)
        if queues:
            await rt.ensure_worker(provider)
        request = Request(
            method=method,
            path=path,
            query=dict(content.get("query") or {}),
            body=body if method in ("POST", "PUT") else None,
            headers=dict(content.get("headers") or {}),
        )
        response = await rt.router.dispatch(rt.owner, request)
        reply: dict[str, Any] = {
            "type": "response",
            "id": content.get("id"),
            "view_id": content.get("view_id"),
            "status": response.status,
        }
        if response.content is not None:
            reply["body"] = {"content_type": response.content_type}
            return reply, [response.content]
        reply["body"] = response.body
        return reply, []

    def _post(self, message: dict[str, Any], buffers: list[bytes] | None = None) -> None:
        """Send to the views from any thread (widget messages go out on the kernel's own loop)."""
        bufs = buffers or []

        def send() -> None:
            if not self._views_ready and message.get("type") != "response":
                self._outbox.put(message, bufs)
                return
            self.send(message, bufs)

        if self._main_loop is not None and not self._main_loop.is_closed():
            self._main_loop.call_soon_threadsafe(send)
        else:
            send()

    def _start_forwarding(self) -> None:
        if self._forwarding is None:
            self._forwarding = self._rt.submit(self._forward_events)

    async def _forward_events(self) -> None:
        """Pass this canvas's events (and the owner's worker changes) to the views; call on_complete."""
        rt = self._rt
        assert rt.feed is not None
        rt.notices.append(lambda text: self._post({"type": "event", "event": {"kind": "notice", "message": text}}))
        since: Cursor | None = None
        while True:
            sub = await rt.feed.subscribe(rt.owner, since)
            try:
                while True:
                    message = await sub.get()
                    if message.get("cursor"):
                        since = Cursor.decode(message["cursor"])
                    kind = message.get("kind")
                    if kind in ("state", "progress", "waiting") and message.get("canvas_id") != self.canvas_id:
                        continue
                    if kind == "canvas" and message.get("canvas_id") != self.canvas_id:
                        continue
                    self._post({"type": "event", "event": dict(message)})
                    if kind == "state" and message.get("status") in TERMINAL and self._callbacks:
                        await self._complete(message["job_id"])
            except StreamClosed:
                continue  # fell behind: subscribe again from the last cursor
            finally:
                rt.feed.unsubscribe(sub)

    async def _complete(self, job_id: str) -> None:
        service = self._rt.service
        assert service is not None
        job = await service.get_job(self._rt.owner, job_id)
        for callback in list(self._callbacks):
            self._call_in_main(callback, job)

    def _call_in_main(self, callback: Callable[[dict[str, Any]], None], job: dict[str, Any]) -> None:
        def run() -> None:
            try:
                callback(job)
            except Exception:
                log.exception("an on_complete callback raised")

        if self._main_loop is not None and not self._main_loop.is_closed():
            self._main_loop.call_soon_threadsafe(run)
        else:
            run()

    def close(self) -> None:
        if self._forwarding is not None:
            self._forwarding.cancel()
            self._forwarding = None
        super().close()


async def _get_canvas(rt: Runtime, canvas_id: str) -> dict[str, Any]:
    assert rt.service is not None
    return await rt.service.get_canvas(rt.owner, canvas_id)


def _queued_provider(method: str, path: str, body: Any) -> tuple[bool, str | None]:
    """Whether a kernel-transport request queues jobs, and the provider it names (None: the default):
    the kernel starts a worker first where no live worker can run them."""
    if method != "POST" or not isinstance(body, dict):
        return False, None
    path = path.strip("/")
    if path == "jobs":
        return True, _provider_named(body)
    match = _GENERATE.match(path)
    if match is None:
        return False, None
    for node in body.get("nodes") or ():
        if isinstance(node, dict) and node.get("id") == match["node"] and isinstance(node.get("data"), dict):
            return True, _provider_named(node["data"])
    return True, None


def _provider_named(fields: dict[str, Any]) -> str | None:
    """The provider a job body or an image node's data names (None: the default)."""
    provider = fields.get("provider")
    return provider if isinstance(provider, str) and provider else None


def _result_or_error(future: Any, content: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
    try:
        result: tuple[dict[str, Any], list[bytes]] = future.result()
        return result
    except Exception:
        log.exception("a kernel-transport request failed")
        return (
            {
                "type": "response",
                "id": content.get("id"),
                "view_id": content.get("view_id"),
                "status": 500,
                "body": {"error": {"code": "internal", "message": "internal error; the kernel log has the details"}},
            },
            [],
        )


def canvases() -> list[dict[str, Any]]:
    """The owner's saved canvases, newest first: id, name, version, node_count, times."""
    rt = runtime()

    async def go() -> list[dict[str, Any]]:
        assert rt.service is not None
        return list((await rt.service.list_canvases(rt.owner))["canvases"])

    return rt.call(go)
