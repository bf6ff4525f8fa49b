"""The canvas widget's Python side: the kernel transport (widget custom messages through the shared
route table) and editing the canvas from Python, on a real database, with no frontend."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import imagen_canvas
from imagen_canvas import Canvas
from imagen_canvas.runtime import Runtime


@pytest.fixture
def rt(db_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    monkeypatch.setenv("IMAGEN_DATA_DIR", str(data_dir))
    monkeypatch.setenv("IMAGEN_POLL_INTERVAL", "0.2")
    runtime = imagen_canvas.configure(database_url=db_url, owner_user_id=uuid.uuid4())
    yield runtime
    runtime.close()


class Views:
    """What the views would receive: every message the widget sends."""

    def __init__(self, canvas: Canvas) -> None:
        self.sent: list[tuple[dict[str, Any], list[bytes]]] = []
        canvas.send = lambda content, buffers=None: self.sent.append((content, list(buffers or [])))  # type: ignore[method-assign]
        self.canvas = canvas

    def request(self, method: str, path: str, **kw: Any) -> tuple[dict[str, Any], list[bytes]]:
        request_id = uuid.uuid4().hex
        self.canvas._on_custom_message(
            None, {"type": "request", "id": request_id, "view_id": "v1", "method": method, "path": path, **kw}, []
        )
        return self.wait(lambda m: m.get("type") == "response" and m.get("id") == request_id)

    def wait(self, match: Any, timeout: float = 20.0) -> tuple[dict[str, Any], list[bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for content, buffers in self.sent:
                if match(content):
                    return content, buffers
            time.sleep(0.02)
        raise AssertionError(f"no matching message in {[c for c, _ in self.sent][-5:]}")


def test_the_kernel_transport_runs_requests_through_the_route_table_and_forwards_events(rt: Runtime) -> None:
    canvas = Canvas(name="kernel")
    views = Views(canvas)
    canvas._on_custom_message(None, {"type": "ready", "view_id": "v1"}, [])
    hello, _ = views.wait(lambda m: m.get("type") == "event" and m["event"]["kind"] == "hello")
    assert hello["event"]["owner_user_id"] == str(rt.owner)
    reply, _ = views.request("GET", "health")
    assert reply["status"] == 200 and reply["body"]["owner_user_id"] == str(rt.owner)
    reply, _ = views.request("POST", "jobs", body={"prompt": "x", "size": "huge"})
    assert reply["status"] == 400 and reply["body"]["error"]["field"] == "size"
    reply, _ = views.request(
        "POST", "jobs", body={"prompt": "a red fox", "canvas_id": canvas.canvas_id, "node_id": "n1", "seed": 3}
    )
    assert reply["status"] == 201, reply
    job_id = reply["body"]["id"]
    # No live worker could run it, so the kernel started one for this owner and said so.
    views.wait(lambda m: m.get("type") == "event" and m["event"]["kind"] == "notice")
    assert reply["body"]["waiting_for_worker"] is None
    done, _ = views.wait(
        lambda m: m.get("type") == "event" and m["event"].get("job_id") == job_id and m["event"].get("status") == "done"
    )
    assert done["event"]["canvas_id"] == canvas.canvas_id and done["event"]["cursor"]
    reply, _ = views.request("GET", f"jobs/{job_id}")
    image = reply["body"]["image"]
    assert image["seed"] == 3 and image["url"] is None  # the bytes come as buffers instead
    reply, buffers = views.request("GET", f"images/{image['id']}/content", query={"variant": "thumbnail"})
    assert reply["status"] == 200 and reply["body"]["content_type"] == "image/webp"
    assert buffers[0][:4] == b"RIFF"
    assert not any("base64" in str(c) for c, _ in views.sent)


def test_messages_to_views_wait_for_the_ready_handshake(rt: Runtime) -> None:
    canvas = Canvas()
    views = Views(canvas)
    canvas._post({"type": "event", "event": {"kind": "notice", "message": "early"}})
    time.sleep(0.1)
    assert views.sent == []
    canvas._on_custom_message(None, {"type": "ready", "view_id": "v1"}, [])
    views.wait(lambda m: m.get("event", {}).get("message") == "early")


def test_no_message_held_for_views_before_the_handshake_is_lost_however_many(rt: Runtime) -> None:
    """More than the 200 the outbox once held: a job's events, a save and a notice per job, before any view
    is ready. Each job's latest state, the latest save and every distinct notice reach the view."""
    canvas = Canvas()
    views = Views(canvas)
    jobs = [f"job-{i}" for i in range(400)]
    for i, job_id in enumerate(jobs):
        for status in ("pending", "running"):
            canvas._post({"type": "event", "event": {"kind": "state", "job_id": job_id, "status": status}})
        canvas._post({"type": "event", "event": {"kind": "progress", "job_id": job_id, "progress": 0.5}})
        canvas._post({"type": "event", "event": {"kind": "state", "job_id": job_id, "status": "done"}})
        canvas._post({"type": "event", "event": {"kind": "canvas", "canvas_id": canvas.canvas_id, "version": i + 1}})
    canvas._post({"type": "event", "event": {"kind": "notice", "message": "started a worker"}})
    assert views.sent == []
    canvas._on_custom_message(None, {"type": "ready", "view_id": "v1"}, [])
    events = [m["event"] for m, _ in views.sent if m.get("type") == "event"]
    latest = {e["job_id"]: e["status"] for e in events if e["kind"] == "state"}
    assert latest == dict.fromkeys(jobs, "done")
    assert [e["version"] for e in events if e["kind"] == "canvas"] == [400]
    assert [e["message"] for e in events if e["kind"] == "notice"] == ["started a worker"]
    # Coalesced, in order: a job's progress comes before its done, as it was sent.
    kinds = [(e["kind"], e.get("job_id")) for e in events if e.get("job_id") == "job-7"]
    assert kinds == [("progress", "job-7"), ("state", "job-7")]
    assert len(events) < 900


def test_a_views_generate_through_the_kernel_builds_the_nodes_jobs_and_starts_a_worker_first(rt: Runtime) -> None:
    canvas = Canvas()
    views = Views(canvas)
    canvas._on_custom_message(None, {"type": "ready", "view_id": "v1"}, [])
    node = {
        "id": "img 1",
        "type": "image",
        "data": {"prompt": "typed, not saved yet", "provider": "local", "variants": 2},
    }
    source = {"id": "p1", "type": "prompt", "data": {"text": "a lighthouse", "style_modifiers": ["ink"]}}
    graph = {"nodes": [node, source], "edges": [{"id": "e1", "source": "p1", "target": "img 1"}]}
    path = f"canvases/{canvas.canvas_id}/nodes/img%201/generate"  # the view percent-encodes the node id
    reply, _ = views.request("POST", path, body=graph, headers={"Idempotency-Key": "click-1"})
    assert reply["status"] == 201, reply
    jobs = reply["body"]["jobs"]
    assert [j["node_id"] for j in jobs] == ["img 1", "img 1"] and len({j["group_id"] for j in jobs}) == 1
    assert {j["prompt"] for j in jobs} == {"a lighthouse"} and jobs[0]["spec"]["style_modifiers"] == ["ink"]
    # No live worker could run them, so the kernel started one before queueing them, and said so.
    views.wait(lambda m: m.get("type") == "event" and m["event"]["kind"] == "notice")
    assert all(j["waiting_for_worker"] is None for j in jobs)
    for job in jobs:
        views.wait(
            lambda m, job_id=job["id"]: (
                m.get("type") == "event" and m["event"].get("job_id") == job_id and m["event"].get("status") == "done"
            )
        )
    again, _ = views.request("POST", path, body=graph, headers={"Idempotency-Key": "click-1"})
    assert [j["id"] for j in again["body"]["jobs"]] == [j["id"] for j in jobs]
    refused, _ = views.request("POST", path, body={"nodes": [{**node, "data": {"prompt": ""}}]})
    assert refused["status"] == 400 and refused["body"]["error"]["field"] == "prompt"


def test_python_builds_and_runs_a_canvas_a_view_would_show(rt: Runtime) -> None:
    canvas = Canvas(name="from python")
    prompt = canvas.add_prompt("a lighthouse at dusk", style_modifiers=["oil painting"])
    left = canvas.add_image(provider="local", variants=2, seed=10)
    right = canvas.add_image(provider="local", size="256x256")
    canvas.connect(prompt, left)
    canvas.connect(prompt, right)
    finished: list[dict[str, Any]] = []
    canvas.on_complete(finished.append)
    jobs = canvas.generate()
    assert len(jobs) == 3
    assert {j["prompt"] for j in jobs} == {"a lighthouse at dusk"}
    assert sorted(j["spec"].get("seed") for j in jobs if j["node_id"] == left) == [10, 11]
    assert all(j["spec"]["style_modifiers"] == ["oil painting"] for j in jobs)
    deadline = time.monotonic() + 30
    while len(finished) < 3:
        assert time.monotonic() < deadline, finished
        time.sleep(0.05)
    assert {j["status"] for j in finished} == {"done"}
    images = canvas.images(left)
    assert [im.size for im in images] == [(512, 512), (512, 512)]
    assert canvas.images(right)[0].size == (256, 256)
    nodes = {n["id"]: n for n in canvas.nodes}
    assert nodes[left]["data"]["current_job_id"] in {j["id"] for j in jobs}
    assert {(e["source"], e["target"]) for e in canvas.edges} == {(prompt, left), (prompt, right)}
    # An image node connected to another refines from its current image.
    refine = canvas.add_image(provider="local")
    canvas.connect(left, refine)
    (job,) = canvas.generate(refine)
    left_job = next(j for j in jobs if j["id"] == nodes[left]["data"]["current_job_id"])
    assert job["prompt"] == "a lighthouse at dusk"
    assert job["spec"]["previous_image_id"] == rt.call(lambda: rt.service.get_job(rt.owner, left_job["id"]))["image_id"]
    assert [c["id"] for c in imagen_canvas.canvases()] == [canvas.canvas_id]
    again = Canvas.open(canvas.canvas_id)
    assert again.canvas_id == canvas.canvas_id and len(again.nodes) == 4


def test_python_sees_a_views_edit_and_merges_with_it(rt: Runtime) -> None:
    canvas = Canvas()
    views = Views(canvas)
    node = canvas.add_prompt("first")
    current, _ = views.request("GET", f"canvases/{canvas.canvas_id}")
    body = current["body"]
    body["nodes"][0]["data"]["text"] = "edited in the browser"
    reply, _ = views.request(
        "PUT", f"canvases/{canvas.canvas_id}", body={"version": body["version"], "nodes": body["nodes"], "edges": []}
    )
    assert reply["status"] == 200
    assert canvas.nodes[0]["data"]["text"] == "edited in the browser"
    other = canvas.add_prompt("second")
    assert [n["id"] for n in canvas.nodes] == [node, other]
    with pytest.raises(Exception, match="no node"):
        canvas.connect(node, "missing")
