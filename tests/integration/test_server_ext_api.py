"""The server extension's REST API and event socket, through a real Jupyter server on real Postgres."""

from __future__ import annotations

import asyncio
import base64
import getpass
import json
import time
import urllib.parse
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from jupyter_server.auth.authorizer import Authorizer
from tornado.httpclient import HTTPClientError

from ..server_helpers import api, finished, message, messages_until, ready


@pytest.fixture
def imagen_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """ImagenCanvasApp settings of one test, from `@config(...)` (indirect parametrization)."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def serverapp_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """ServerApp settings of one test, from `@server(...)`."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def imagen_env(request: pytest.FixtureRequest) -> dict[str, str | None]:
    """Environment of the server of one test, from `@env(...)` (None: unset)."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def jp_server_config(
    db_url: str,
    data_dir: Path,
    imagen_config: dict[str, Any],
    serverapp_config: dict[str, Any],
    imagen_env: dict[str, str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    monkeypatch.setenv("IMAGEN_DATA_DIR", str(data_dir))
    monkeypatch.setenv("REPLICATE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    for name in ("OPENAI_API_KEY", "STABILITY_API_KEY", "REPLICATE_API_TOKEN", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    imagen_config = {k: v(db_url) if callable(v) else v for k, v in imagen_config.items()}
    for name, value in imagen_env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return {
        "ServerApp": {"jpserver_extensions": {"imagen_canvas_server": True}, **serverapp_config},
        "ImagenCanvasApp": {"database_url": db_url, "poll_interval": 0.5, **imagen_config},
    }


@pytest.fixture(autouse=True)
def _extension_stops_before_its_database_is_dropped(jp_serverapp: Any, jp_asyncio_loop: Any, db_url: str) -> Any:
    yield
    for app in jp_serverapp.extension_manager.extension_apps.get("imagen_canvas_server", ()):
        jp_asyncio_loop.run_until_complete(app.stop_extension())


def config(**values: Any) -> Any:
    return pytest.mark.parametrize("imagen_config", [values], indirect=True)


def server(**values: Any) -> Any:
    return pytest.mark.parametrize("serverapp_config", [values], indirect=True)


def env(**values: str | None) -> Any:
    return pytest.mark.parametrize("imagen_env", [values], indirect=True)


def services_of(jp_serverapp: Any) -> Any:
    return jp_serverapp.web_app.settings["imagen"]


async def post_job(jp_fetch: Any, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    status, job = await api(jp_fetch, "jobs", method="POST", body=body, **kw)
    assert status == 201, job
    return dict(job)


async def test_a_local_job_shows_pending_running_done_on_the_socket_and_its_image_loads(
    jp_fetch: Any, jp_ws_fetch: Any
) -> None:
    await ready(jp_fetch)
    ws = await jp_ws_fetch("imagen", "api", "events")
    other_view = await jp_ws_fetch("imagen", "api", "events")
    hello = await message(ws)
    assert hello["kind"] == "hello" and hello["cursor"]
    await message(other_view)
    job = await post_job(jp_fetch, {"prompt": "a red fox", "node_id": "n1", "seed": 7})
    assert job["status"] == "pending" and job["provider"] == "local" and job["node_id"] == "n1"
    for view in (ws, other_view):  # the view that queued the job and another view of the owner
        events = await messages_until(view, finished(job["id"]))
        mine = [e for e in events if e.get("job_id") == job["id"] and e["kind"] == "state"]
        assert [e["status"] for e in mine] == ["pending", "running", "done"]
        assert all(e["node_id"] == "n1" and e["cursor"] for e in mine)
        assert [e["event_id"] for e in mine] == sorted(e["event_id"] for e in mine)
        assert mine[-1]["image_id"]
    other_view.close()
    status, done = await api(jp_fetch, "jobs", job["id"])
    assert status == 200 and done["status"] == "done" and done["image"]["seed"] == 7
    assert done["image"]["width"] == done["image"]["height"] == 512
    for key in ("url", "thumbnail_url"):
        url = done["image"][key]
        assert url.startswith("/a%40b/imagen/files/")
        response = await jp_fetch(
            url.split("/a%40b/", 1)[1].split("?")[0],
            params=dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)),
        )
        assert response.code == 200
        assert response.body[:4] in (b"\x89PNG", b"RIFF")
    ws.close()


BAD_BODIES = [
    ({"prompt": "x", "colour": "red"}, "unknown_field", "colour"),
    ({"prompt": ""}, "invalid_field", "prompt"),
    ({"prompt": "   "}, "invalid_field", "prompt"),
    ({}, "invalid_field", "prompt"),
    ({"prompt": "x" * 32001}, "invalid_field", "prompt"),
    ({"prompt": "x" * 4001, "provider": "openai", "model": "dall-e-3"}, "invalid_field", "prompt"),
    ({"prompt": "x", "provider": "dalle"}, "invalid_field", "provider"),
    ({"prompt": "x", "model": "local-v9"}, "invalid_field", "model"),
    ({"prompt": "x", "provider": "openai", "size": "512x512"}, "invalid_field", "size"),
    ({"prompt": "x", "size": "big"}, "invalid_field", "size"),
    ({"prompt": "x", "provider": "openai", "model": "dall-e-3", "quality": "low"}, "invalid_field", "quality"),
    ({"prompt": "x", "provider": "openai", "seed": 3}, "invalid_field", "seed"),
    ({"prompt": "x", "seed": "3"}, "invalid_field", "seed"),
    ({"prompt": "x", "seed": -1}, "invalid_field", "seed"),
    ({"prompt": 7}, "invalid_field", "prompt"),
    ({"prompt": "x", "style_modifiers": "oil"}, "invalid_field", "style_modifiers"),
    ({"prompt": "x", "canvas_id": "not-a-uuid"}, "invalid_field", "canvas_id"),
    ({"prompt": "x", "canvas_id": str(uuid.uuid4())}, "invalid_field", "canvas_id"),
    ({"prompt": "x", "previous_image_id": str(uuid.uuid4())}, "invalid_field", "previous_image_id"),
    ({"prompt": "x", "max_attempts": 0}, "invalid_field", "max_attempts"),
    ({"prompt": "x", "n": 2}, "invalid_field", "n"),
    ({"prompt": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg"}, "invalid_field", "prompt"),
]


@config(run_worker=False)
@pytest.mark.parametrize(("body", "code", "field"), BAD_BODIES, ids=[f"{c[2]}-{i}" for i, c in enumerate(BAD_BODIES)])
async def test_a_bad_job_body_is_a_400_that_names_its_field(
    jp_fetch: Any, db_url: str, body: dict[str, Any], code: str, field: str
) -> None:
    await ready(jp_fetch)
    status, answer = await api(jp_fetch, "jobs", method="POST", body=body)
    assert status == 400, answer
    assert answer["error"]["code"] == code
    assert answer["error"]["field"] == field
    assert answer["error"]["message"].startswith(field)
    assert "Traceback" not in answer["error"]["message"]
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("select count(*) from imagen.jobs") == 0
    finally:
        await conn.close()


@config(run_worker=False)
async def test_malformed_json_and_non_objects_are_400_and_bodies_over_1_mib_are_413(jp_fetch: Any) -> None:
    await ready(jp_fetch)
    status, answer = await api(jp_fetch, "jobs", method="POST", body="{not json")
    assert status == 400 and answer["error"]["code"] == "invalid_json"
    status, answer = await api(jp_fetch, "jobs", method="POST", body="[1, 2]")
    assert status == 400 and answer["error"]["code"] == "invalid_json"
    status, answer = await api(jp_fetch, "jobs", method="POST", body=json.dumps({"prompt": "x" * (1024 * 1024)}))
    assert status == 413 and answer["error"]["code"] == "payload_too_large"


# Bytes with a PNG signature: the files route serves by type, it does not decode.
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def _signed_file_of_the_owner(jp_serverapp: Any, data_dir: Path) -> tuple[str, dict[str, str]]:
    """An image of the server's owner in the local store and a valid signature for it: the files route
    would serve it to a signed-in, authorized user."""
    services = services_of(jp_serverapp)
    name = f"{services.owner}/{uuid.uuid4()}.png"
    target = data_dir / "store" / "images" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(PNG)
    expires = int(time.time()) + 600
    return name, {"expires": str(expires), "sig": services.storage.sign(name, expires)}


async def test_every_route_refuses_a_request_without_authentication(
    jp_fetch: Any, jp_ws_fetch: Any, jp_serverapp: Any, data_dir: Path
) -> None:
    await ready(jp_fetch)
    name, signature = _signed_file_of_the_owner(jp_serverapp, data_dir)
    served = await jp_fetch("imagen", "files", "images", name, params=signature)
    assert served.code == 200 and served.body == PNG  # the URL is good: only the login is missing below
    no_auth = {"Authorization": ""}
    for method, parts in [
        ("GET", ("jobs",)),
        ("POST", ("jobs",)),
        ("GET", ("health",)),
        ("GET", ("providers",)),
        ("PUT", ("canvases", str(uuid.uuid4()))),
        ("POST", ("canvases", str(uuid.uuid4()), "nodes", "n1", "generate")),
        ("GET", ("stats",)),
    ]:
        status, answer = await api(
            jp_fetch, *parts, method=method, body={"prompt": "x"} if method != "GET" else None, headers=no_auth
        )
        assert status in (401, 403), (method, parts, status)
        assert answer["error"]["code"] in ("unauthorized", "forbidden", "xsrf")
    with pytest.raises(HTTPClientError) as err:
        await jp_ws_fetch("imagen", "api", "events", headers=no_auth)
    assert err.value.code in (401, 403)
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("imagen", "files", "images", name, params=signature, headers=no_auth)
    assert err.value.code in (401, 403)


class DenyImagen(Authorizer):
    """An authorizer that refuses every action on resource `imagen` (and allows the rest)."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource != "imagen"


@config(run_worker=False)
@server(authorizer_class=DenyImagen)
async def test_an_authorizer_that_denies_imagen_gets_403_on_rest_files_and_the_socket(
    jp_fetch: Any, jp_ws_fetch: Any, jp_serverapp: Any, data_dir: Path
) -> None:
    assert await services_of(jp_serverapp).router_ready() is not None
    name, signature = _signed_file_of_the_owner(jp_serverapp, data_dir)
    for method, parts in [("GET", ("health",)), ("GET", ("jobs",)), ("POST", ("jobs",))]:
        status, answer = await api(jp_fetch, *parts, method=method, body={"prompt": "x"} if method == "POST" else None)
        assert status == 403, (method, parts, answer)
        assert answer["error"]["code"] == "forbidden"
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("imagen", "files", "images", name, params=signature)
    assert err.value.code == 403
    with pytest.raises(HTTPClientError) as err:
        await jp_ws_fetch("imagen", "api", "events")
    assert err.value.code == 403
    # the same user is signed in and may use the rest of the server
    assert (await jp_fetch("api", "status")).code == 200


async def _login_cookies(jp_fetch: Any, token: str) -> dict[str, str]:
    """Log in with the token the way a browser does, and return the cookies it gets."""
    page = await jp_fetch("login", headers={"Authorization": ""})
    cookies = _cookies(page.headers.get_list("Set-Cookie"))
    body = urllib.parse.urlencode({"password": token, "_xsrf": cookies["_xsrf"]})
    try:
        await jp_fetch(
            "login",
            method="POST",
            body=body,
            follow_redirects=False,
            headers={"Authorization": "", "Cookie": _cookie_header(cookies)},
        )
    except HTTPClientError as exc:  # the redirect after a successful login
        assert exc.response is not None and exc.code == 302, exc
        cookies.update(_cookies(exc.response.headers.get_list("Set-Cookie")))
    return cookies


def _cookies(headers: list[str]) -> dict[str, str]:
    out = {}
    for header in headers:
        name, _, rest = header.partition("=")
        out[name.strip()] = rest.split(";", 1)[0]
    return out


def _cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


@config(run_worker=False)
async def test_a_cookie_authenticated_write_needs_the_xsrf_token(jp_fetch: Any, jp_serverapp: Any) -> None:
    await ready(jp_fetch)
    cookies = await _login_cookies(jp_fetch, jp_serverapp.identity_provider.token)
    browser = {"Authorization": "", "Cookie": _cookie_header(cookies)}
    status, answer = await api(jp_fetch, "jobs", headers=browser)
    assert status == 200, answer  # a read needs no XSRF token
    status, answer = await api(jp_fetch, "jobs", method="POST", body={"prompt": "x"}, headers=browser)
    assert status == 403 and answer["error"]["code"] == "xsrf", answer
    status, answer = await api(
        jp_fetch, "jobs", method="POST", body={"prompt": "x"}, headers={**browser, "X-XSRFToken": cookies["_xsrf"]}
    )
    assert status == 201, answer


@config(run_worker=False)
async def test_a_repeated_post_with_the_same_idempotency_key_returns_the_same_job(jp_fetch: Any, db_url: str) -> None:
    await ready(jp_fetch)
    first = await post_job(jp_fetch, {"prompt": "a fox"}, headers={"Idempotency-Key": "click-1"})
    again = await post_job(jp_fetch, {"prompt": "a fox"}, headers={"Idempotency-Key": "click-1"})
    other = await post_job(jp_fetch, {"prompt": "a fox"}, headers={"Idempotency-Key": "click-2"})
    assert again["id"] == first["id"] != other["id"]
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("select count(*) from imagen.jobs") == 2
    finally:
        await conn.close()


async def test_a_nodes_generate_over_rest_queues_its_variants_announced_and_a_retry_returns_them(
    jp_fetch: Any, jp_ws_fetch: Any
) -> None:
    await ready(jp_fetch)
    canvas_id = str(uuid.uuid4())
    status, _ = await api(jp_fetch, "canvases", canvas_id, method="PUT", body={"version": 0, "nodes": [], "edges": []})
    assert status == 201
    ws = await jp_ws_fetch("imagen", "api", "events")
    await message(ws)
    node = {
        "id": "image 1",
        "type": "image",
        "data": {"prompt": "a red fox", "variants": 2, "seed": 5, "seed_locked": True},
    }
    parts = ("canvases", canvas_id, "nodes", "image 1", "generate")  # jp_fetch percent-encodes it
    key = {"Idempotency-Key": "click-1"}
    status, answer = await api(jp_fetch, *parts, method="POST", body={"nodes": [node], "edges": []}, headers=key)
    assert status == 201, answer
    jobs = answer["jobs"]
    assert [(j["node_id"], j["spec"]["seed"]) for j in jobs] == [("image 1", 5), ("image 1", 6)]
    events: list[dict[str, Any]] = []
    for job in jobs:
        if not any(finished(job["id"])(e) for e in events):
            events += await messages_until(ws, finished(job["id"]))
    for job in jobs:
        mine = [e["status"] for e in events if e.get("job_id") == job["id"] and e["kind"] == "state"]
        assert mine == ["pending", "running", "done"]
    status, again = await api(jp_fetch, *parts, method="POST", body={"nodes": [node], "edges": []}, headers=key)
    assert status == 201 and [j["id"] for j in again["jobs"]] == [j["id"] for j in jobs]
    status, refused = await api(jp_fetch, *parts, method="POST", body={"nodes": [node], "edges": [], "x": 1})
    assert status == 400 and refused["error"]["field"] == "x"
    ws.close()


@config(run_worker=False, max_pending_jobs=3)
async def test_an_owner_at_the_pending_cap_gets_429_with_retry_after(jp_fetch: Any) -> None:
    await ready(jp_fetch)
    for i in range(3):
        await post_job(jp_fetch, {"prompt": f"job {i}"}, headers={"Idempotency-Key": f"k{i}"})
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("imagen", "api", "jobs", method="POST", body=json.dumps({"prompt": "one too many"}))
    assert err.value.code == 429
    assert err.value.response is not None
    assert int(err.value.response.headers["Retry-After"]) >= 1
    assert json.loads(err.value.response.body)["error"]["code"] == "too_many_pending"
    # A retry of an accepted request still answers with its job, cap or not.
    again = await post_job(jp_fetch, {"prompt": "job 0"}, headers={"Idempotency-Key": "k0"})
    assert again["prompt"] == "job 0"


@config(run_worker=False)
async def test_a_job_no_live_worker_can_run_says_so_in_its_json_and_on_the_socket(
    jp_fetch: Any, jp_ws_fetch: Any
) -> None:
    await ready(jp_fetch)
    ws = await jp_ws_fetch("imagen", "api", "events")
    await message(ws)
    job = await post_job(jp_fetch, {"prompt": "nobody will run me"})
    assert "no worker is running" in job["waiting_for_worker"]
    queued = await message(ws)
    assert (queued["kind"], queued["status"], queued["job_id"]) == ("state", "pending", job["id"])
    event = await message(ws)
    assert event["kind"] == "waiting" and event["job_id"] == job["id"] and "no worker" in event["message"]
    _status, again = await api(jp_fetch, "jobs", job["id"])
    assert "no worker is running" in again["waiting_for_worker"]
    ws.close()


async def test_a_job_for_a_provider_no_live_worker_runs_says_which(jp_fetch: Any) -> None:
    await ready(jp_fetch)
    deadline = time.monotonic() + 10
    while not (await api(jp_fetch, "workers"))[1]["workers"]:
        assert time.monotonic() < deadline, "the in-process worker never registered"
        await asyncio.sleep(0.05)
    job = await post_job(jp_fetch, {"prompt": "x", "provider": "openai"})
    assert "no live worker can run provider openai" in job["waiting_for_worker"]
    assert "local" in job["waiting_for_worker"]


async def test_health_lists_the_live_in_process_worker_and_providers_say_why_not(jp_fetch: Any) -> None:
    await ready(jp_fetch)
    deadline = time.monotonic() + 10
    while True:
        health = await ready(jp_fetch)
        if health["workers"]:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    worker = health["workers"][0]
    assert worker["scope"] == "all" and "local" in worker["providers"] and worker["pid"] > 0
    _status, table = await api(jp_fetch, "providers")
    by_name = {p["name"]: p for p in table["providers"]}
    assert by_name["local"]["available"] and by_name["local"]["live_workers"] == 1
    assert by_name["openai"]["available"] is False
    assert by_name["openai"]["reason"] == "OPENAI_API_KEY is not set"
    assert by_name["openai"]["live_workers"] == 0
    assert by_name["openai"]["default_model"] == "gpt-image-1"
    assert {m["model"] for m in by_name["openai"]["models"]} >= {"gpt-image-1", "dall-e-3"}


@config(run_worker=False)
async def test_cancelling_a_pending_job_cancels_it_at_once(jp_fetch: Any, jp_ws_fetch: Any) -> None:
    await ready(jp_fetch)
    job = await post_job(jp_fetch, {"prompt": "never mind"})
    status, after = await api(jp_fetch, "jobs", job["id"], "cancel", method="POST")
    assert status == 200 and after["status"] == "cancelled"
    status, answer = await api(jp_fetch, "jobs", str(uuid.uuid4()), "cancel", method="POST")
    assert status == 404 and answer["error"]["code"] == "not_found"


async def test_cancelling_a_running_job_stops_it(jp_fetch: Any, jp_ws_fetch: Any, db_url: str) -> None:
    await ready(jp_fetch)
    ws = await jp_ws_fetch("imagen", "api", "events")
    await message(ws)
    job = await post_job(jp_fetch, {"prompt": "slow", "options": {"delay_s": 30}})
    await messages_until(ws, lambda m: m.get("job_id") == job["id"] and m.get("status") == "running")
    assert (await ready(jp_fetch))["worker"]["in_flight"] == 1
    status, after = await api(jp_fetch, "jobs", job["id"], "cancel", method="POST")
    assert status == 200 and after["status"] == "cancelled"
    events = await messages_until(ws, finished(job["id"]))
    assert events[-1]["status"] == "cancelled"
    # The handler itself stops (its 30 s provider call is aborted): the in-process worker soon has
    # nothing in flight, long before the call would have ended.
    deadline = time.monotonic() + 10
    while (health := await ready(jp_fetch))["worker"]["in_flight"]:
        assert time.monotonic() < deadline, f"the handler kept running after the cancel: {health['worker']}"
        await asyncio.sleep(0.05)
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow("select status, image_id from imagen.jobs where id = $1", uuid.UUID(job["id"]))
        assert row["status"] == "cancelled" and row["image_id"] is None
    finally:
        await conn.close()
    ws.close()


@config(run_worker=False)
async def test_paging_through_jobs_covers_each_job_once_while_jobs_are_added(jp_fetch: Any) -> None:
    await ready(jp_fetch)
    before = [(await post_job(jp_fetch, {"prompt": f"old {i}"}))["id"] for i in range(23)]
    seen: list[str] = []
    cursor = None
    added = 0
    while True:
        params = {"limit": "5", **({"cursor": cursor} if cursor else {})}
        status, page = await api(jp_fetch, "jobs", params=params)
        assert status == 200, page
        seen += [j["id"] for j in page["jobs"]]
        # new jobs arrive between pages (they are newer than every page still to come)
        await post_job(jp_fetch, {"prompt": f"new {added}"})
        added += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert set(before) <= set(seen)
    assert set(seen) - set(before) == set()  # the new ones came after the first page was read
    status, answer = await api(jp_fetch, "jobs", params={"cursor": "garbage!"})
    assert status == 400 and answer["error"]["field"] == "cursor"
    status, answer = await api(jp_fetch, "jobs", params={"status": "finished"})
    assert status == 400 and answer["error"]["field"] == "status"


@config(run_worker=False)
async def test_jobs_filter_by_canvas_node_status_and_provider(jp_fetch: Any) -> None:
    await ready(jp_fetch)
    canvas_id = str(uuid.uuid4())
    status, _ = await api(jp_fetch, "canvases", canvas_id, method="PUT", body={"version": 0, "nodes": [], "edges": []})
    assert status == 201
    a = await post_job(jp_fetch, {"prompt": "a", "canvas_id": canvas_id, "node_id": "n1"})
    b = await post_job(jp_fetch, {"prompt": "b", "canvas_id": canvas_id, "node_id": "n2"})
    await post_job(jp_fetch, {"prompt": "c"})
    _, page = await api(jp_fetch, "jobs", params={"canvas_id": canvas_id, "node_id": "n1"})
    assert [j["id"] for j in page["jobs"]] == [a["id"]]
    _, page = await api(jp_fetch, "jobs", params={"canvas_id": canvas_id})
    assert [j["id"] for j in page["jobs"]] == [b["id"], a["id"]]
    await api(jp_fetch, "jobs", a["id"], "cancel", method="POST")
    _, page = await api(jp_fetch, "jobs", params={"status": "cancelled"})
    assert [j["id"] for j in page["jobs"]] == [a["id"]]
    _, page = await api(jp_fetch, "jobs", params={"provider": "openai"})
    assert page["jobs"] == []


@config(run_worker=False)
async def test_a_stale_canvas_save_gets_409_with_the_current_canvas(jp_fetch: Any, jp_ws_fetch: Any) -> None:
    await ready(jp_fetch)
    ws = await jp_ws_fetch("imagen", "api", "events")
    await message(ws)
    canvas_id = str(uuid.uuid4())
    graph = {
        "nodes": [
            {"id": "p", "type": "prompt", "position_x": 1, "position_y": 2, "data": {"text": "a fox"}},
            {"id": "i", "type": "image", "data": {"provider": "local"}},
        ],
        "edges": [{"id": "e", "source": "p", "target": "i"}],
    }
    status, first = await api(jp_fetch, "canvases", canvas_id, method="PUT", body={"version": 0, **graph})
    assert status == 201 and first["version"] == 1
    event = await message(ws)
    assert event == {**event, "kind": "canvas", "canvas_id": canvas_id, "version": 1}
    status, second = await api(
        jp_fetch, "canvases", canvas_id, method="PUT", body={"version": 1, "name": "Foxes", **graph}
    )
    assert status == 200 and second["version"] == 2
    status, stale = await api(
        jp_fetch, "canvases", canvas_id, method="PUT", body={"version": 1, "nodes": [], "edges": []}
    )
    assert status == 409 and stale["error"]["code"] == "version_conflict"
    assert stale["current"]["version"] == 2 and stale["current"]["name"] == "Foxes"
    assert {n["id"] for n in stale["current"]["nodes"]} == {"p", "i"}
    status, stored = await api(jp_fetch, "canvases", canvas_id)
    assert stored["version"] == 2 and len(stored["nodes"]) == 2 and stored["edges"][0]["target"] == "i"
    status, answer = await api(
        jp_fetch,
        "canvases",
        canvas_id,
        method="PUT",
        body={"version": 2, "nodes": [], "edges": [{"id": "e", "source": "p", "target": "i"}]},
    )
    assert status == 400 and answer["error"]["field"] == "edges[0].source"
    status, listing = await api(jp_fetch, "canvases")
    assert [c["id"] for c in listing["canvases"]] == [canvas_id] and listing["canvases"][0]["node_count"] == 2
    status, _ = await api(jp_fetch, "canvases", canvas_id, method="DELETE")
    assert status == 204
    status, _ = await api(jp_fetch, "canvases", canvas_id)
    assert status == 404
    ws.close()


BAD_CANVAS_BODIES = [
    ({"version": 1, "viewport": {"x": 0, "y": 0, "zoom": 0}, "nodes": [], "edges": []}, "viewport.zoom"),
    ({"version": 1, "viewport": {"x": "left", "y": 0, "zoom": 1}, "nodes": [], "edges": []}, "viewport.x"),
    ({"version": 1, "viewport": {"x": 0, "y": 0, "zoom": 1, "angle": 3}, "nodes": [], "edges": []}, "viewport.angle"),
    ({"version": 1, "viewport": [0, 0, 1], "nodes": [], "edges": []}, "viewport"),
    (
        {"version": 1, "nodes": [{"id": "a", "type": "image"}, {"id": "a", "type": "prompt"}], "edges": []},
        "nodes[1].id",
    ),
    ({"version": 1, "nodes": [{"id": "a", "type": "Image Node"}], "edges": []}, "nodes[0].type"),
    ({"version": 1, "nodes": [{"id": "a", "type": "image", "position_x": "1"}], "edges": []}, "nodes[0].position_x"),
    (
        {"version": 1, "nodes": [{"id": "a", "type": "image", "data": {"x": "y" * 70_000}}], "edges": []},
        "nodes[0].data",
    ),
    ({"version": -1, "nodes": [], "edges": []}, "version"),
    ({"nodes": [], "edges": []}, "version"),
    ({"version": 1, "name": "", "nodes": [], "edges": []}, "name"),
]


@config(run_worker=False)
@pytest.mark.parametrize(("body", "field"), BAD_CANVAS_BODIES)
async def test_a_bad_canvas_save_is_refused_naming_the_field_and_the_stored_canvas_is_kept(
    jp_fetch: Any, body: dict[str, Any], field: str
) -> None:
    await ready(jp_fetch)
    canvas_id = str(uuid.uuid4())
    graph = {"nodes": [{"id": "p", "type": "prompt", "data": {"text": "a fox"}}], "edges": []}
    saved = {"version": 0, "name": "Kept", "viewport": {"x": 10, "y": -4.5, "zoom": 0.5}, **graph}
    status, first = await api(jp_fetch, "canvases", canvas_id, method="PUT", body=saved)
    assert status == 201 and first["viewport"] == {"x": 10, "y": -4.5, "zoom": 0.5}
    status, answer = await api(jp_fetch, "canvases", canvas_id, method="PUT", body=body)
    assert status == 400 and answer["error"]["field"] == field, answer
    assert field.split(".")[0].split("[")[0] in answer["error"]["message"]
    status, stored = await api(jp_fetch, "canvases", canvas_id)
    assert stored["version"] == 1 and stored["name"] == "Kept" and stored["viewport"] == first["viewport"]
    assert [n["id"] for n in stored["nodes"]] == ["p"]


async def test_an_empty_viewport_is_the_default_view(jp_fetch: Any) -> None:
    await ready(jp_fetch)
    canvas_id = str(uuid.uuid4())
    status, canvas = await api(
        jp_fetch, "canvases", canvas_id, method="PUT", body={"version": 0, "viewport": {}, "nodes": [], "edges": []}
    )
    assert status == 201 and canvas["viewport"] == {"x": 0, "y": 0, "zoom": 1}


async def _done_job(jp_fetch: Any, jp_ws_fetch: Any) -> dict[str, Any]:
    ws = await jp_ws_fetch("imagen", "api", "events")
    await message(ws)
    job = await post_job(jp_fetch, {"prompt": "a lighthouse"})
    await messages_until(ws, finished(job["id"]))
    ws.close()
    _status, done = await api(jp_fetch, "jobs", job["id"])
    assert done["status"] == "done", done
    return dict(done)


async def test_file_urls_load_only_signed_unexpired_untampered_and_for_their_owner(
    jp_fetch: Any, jp_ws_fetch: Any, jp_serverapp: Any, data_dir: Path
) -> None:
    await ready(jp_fetch)
    done = await _done_job(jp_fetch, jp_ws_fetch)
    url = done["image"]["url"]
    path = urllib.parse.urlsplit(url).path.split("/a%40b/", 1)[1]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    ok = await jp_fetch(path, params=query)
    assert ok.code == 200 and ok.headers["Content-Type"] == "image/png"
    assert "immutable" in ok.headers["Cache-Control"] and ok.headers["ETag"]
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch(path, params=query, headers={"If-None-Match": ok.headers["ETag"]})
    assert err.value.code == 304
    storage = jp_serverapp.web_app.settings["imagen"].storage
    rel = path.split("imagen/files/images/", 1)[1]
    refused = [
        {**query, "sig": "0" * 64},  # tampered
        {**query, "expires": str(int(query["expires"]) + 1)},  # a changed expiry
        {"expires": str(int(time.time()) - 1), "sig": storage.sign(rel, int(time.time()) - 1)},  # expired
        {},  # unsigned
    ]
    for params in refused:
        with pytest.raises(HTTPClientError) as err:
            await jp_fetch(path, params=params)
        assert err.value.code == 403, params
    # Another owner's file, validly signed: refused for this owner.
    other = f"{uuid.uuid4()}/x.png"
    (data_dir / "store" / "images" / other).parent.mkdir(parents=True)
    (data_dir / "store" / "images" / other).write_bytes(b"\x89PNG")
    expires = int(time.time()) + 60
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch(
            "imagen", "files", "images", other, params={"expires": str(expires), "sig": storage.sign(other, expires)}
        )
    assert err.value.code == 403


@config(run_worker=False)
async def test_no_file_url_leaves_the_store_raw_encoded_absolute_or_through_a_symlink(
    jp_fetch: Any, jp_serverapp: Any, data_dir: Path, http_server_client: Any, jp_auth_header: dict[str, str]
) -> None:
    await ready(jp_fetch)
    services = services_of(jp_serverapp)
    storage, owner = services.storage, str(services.owner)
    mine = data_dir / "store" / "images" / owner
    mine.mkdir(parents=True)
    # An image outside the store, beside it: `images/{owner}/../../../outside.png` is this file, and it
    # has an image type, so a route that only checked the signature, the owner and the type would serve it.
    outside = data_dir / "outside.png"
    outside.write_bytes(PNG)
    assert (data_dir / "store" / "images" / owner / ".." / ".." / ".." / "outside.png").resolve() == outside.resolve()
    expires = int(time.time()) + 600
    base = f"{jp_serverapp.base_url}imagen/files/images/"

    async def get(raw_path: str, signed_path: str) -> tuple[int, bytes]:
        """GET a files URL exactly as written (no client-side normalising or escaping), signed for the
        path the server decodes it to."""
        query = urllib.parse.urlencode({"expires": expires, "sig": storage.sign(signed_path, expires)})
        response = await http_server_client.fetch(
            f"{base}{raw_path}?{query}", headers=jp_auth_header, raise_error=False
        )
        return response.code, response.body or b""

    traversal = f"{owner}/../../../outside.png"
    cases = {
        "raw": (traversal, traversal),
        "encoded": (f"{owner}/%2e%2e/%2E%2E/%2e%2e/outside.png", traversal),
        "encoded slashes": (f"{owner}%2F..%2F..%2F..%2Foutside.png", traversal),
        "absolute": (urllib.parse.quote(str(outside), safe=""), str(outside)),
    }
    link = mine / "leak.png"
    link.symlink_to(outside)
    cases["symlink"] = (f"{owner}/leak.png", f"{owner}/leak.png")
    answers = {case: await get(raw_path, signed_path) for case, (raw_path, signed_path) in cases.items()}
    served = {case: status for case, (status, body) in answers.items() if status not in (403, 404) or body == PNG}
    assert served == {}, f"served from outside the store: {served}"
    # the same route serves a file inside the store, signed the same way
    (mine / "inside.png").write_bytes(PNG)
    assert await get(f"{owner}/inside.png", f"{owner}/inside.png") == (200, PNG)


async def test_image_metadata_is_signed_afresh_and_its_content_route_serves_both_variants(
    jp_fetch: Any, jp_ws_fetch: Any
) -> None:
    await ready(jp_fetch)
    done = await _done_job(jp_fetch, jp_ws_fetch)
    status, image = await api(jp_fetch, "images", done["image_id"])
    assert status == 200 and image["job_id"] == done["id"] and image["url"] and image["expires_at"]
    full = await jp_fetch("imagen", "api", "images", done["image_id"], "content")
    thumb = await jp_fetch("imagen", "api", "images", done["image_id"], "content", params={"variant": "thumbnail"})
    assert full.headers["Content-Type"] == "image/png" and full.body[:4] == b"\x89PNG"
    assert thumb.headers["Content-Type"] == "image/webp" and len(thumb.body) < len(full.body)
    status, answer = await api(jp_fetch, "images", str(uuid.uuid4()))
    assert status == 404 and answer["error"]["code"] == "not_found"
    status, events = await api(jp_fetch, "jobs", done["id"], "events")
    assert [e["status"] for e in events["events"] if e["kind"] == "state"] == ["pending", "running", "done"]


async def test_image_urls_are_signed_afresh_on_every_read_so_a_read_after_the_url_window_gets_a_new_valid_one(
    jp_fetch: Any, jp_ws_fetch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagen_worker.storage import local

    await ready(jp_fetch)
    done = await _done_job(jp_fetch, jp_ws_fetch)
    _status, first = await api(jp_fetch, "images", done["image_id"])
    # The local store keeps one URL per image for a window (URL_WINDOW, 300 s: browsers reuse what they
    # cached); a read after the window must sign again, not hand out what an earlier read made.
    real_time = time.time
    shifted = type("Clock", (), {"time": staticmethod(lambda: real_time() + local.URL_WINDOW + 1)})
    monkeypatch.setattr(local, "time", shifted)
    _status, later = await api(jp_fetch, "images", done["image_id"])
    for key in ("url", "thumbnail_url"):
        before, after = (urllib.parse.urlsplit(image[key]) for image in (first, later))
        assert after.path == before.path
        old, new = (dict(urllib.parse.parse_qsl(u.query)) for u in (before, after))
        assert int(new["expires"]) > int(old["expires"]) and new["sig"] != old["sig"], key
        loaded = await jp_fetch(after.path.split("/a%40b/", 1)[1], params=new)  # valid, at the moved clock too
        assert loaded.code == 200 and loaded.body[:4] in (b"\x89PNG", b"RIFF")
    assert datetime.fromisoformat(later["expires_at"]) > datetime.fromisoformat(first["expires_at"])


async def test_a_reconnect_with_since_replays_the_missed_events_exactly_once(
    jp_fetch: Any, jp_ws_fetch: Any, db_url: str
) -> None:
    await ready(jp_fetch)
    ws = await jp_ws_fetch("imagen", "api", "events")
    await message(ws)
    first = await post_job(jp_fetch, {"prompt": "first"})
    seen = await messages_until(ws, finished(first["id"]))
    cursor = seen[-1]["cursor"]
    ws.close()
    missed = [await post_job(jp_fetch, {"prompt": f"while away {i}"}) for i in range(5)]
    conn = await asyncpg.connect(db_url)
    try:
        deadline = time.monotonic() + 30
        while await conn.fetchval("select count(*) from imagen.jobs where status <> 'done'"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        expected = [
            r["id"]
            for r in await conn.fetch(
                "select id from imagen.job_events where job_id = any($1::uuid[]) and kind in ('state', 'progress', 'waiting') order by id",
                [uuid.UUID(j["id"]) for j in missed],
            )
        ]
    finally:
        await conn.close()
    ws = await jp_ws_fetch("imagen", "api", "events", params={"since": cursor})
    hello = await message(ws)
    assert hello["kind"] == "hello"
    replayed = [await message(ws) for _ in expected]
    assert [m["event_id"] for m in replayed] == expected
    # and then live, with nothing repeated
    late = await post_job(jp_fetch, {"prompt": "after"})
    live = await messages_until(ws, finished(late["id"]))
    assert all(m.get("job_id") == late["id"] for m in live)
    ws.close()
    ws = await jp_ws_fetch("imagen", "api", "events", params={"since": "1:2:x"})
    await asyncio.wait_for(ws.read_message(), 5)
    assert ws.close_code == 4400


def _imagen_tasks() -> list[asyncio.Task[Any]]:
    """Tasks still running that imagen started: named imagen-* (app.py, the worker, the feed, the socket),
    or running imagen code whatever their name."""
    out = []
    for task in asyncio.all_tasks():
        if task.done() or task is asyncio.current_task():
            continue
        code = getattr(task.get_coro(), "cr_code", None)
        where = code.co_filename if code is not None else ""
        if task.get_name().startswith("imagen") or "imagen_worker" in where or "imagen_canvas_server" in where:
            out.append(task)
    return out


@config(worker_shutdown_grace=0.5)
async def test_the_extension_stops_with_no_task_or_connection_left(
    jp_fetch: Any, jp_ws_fetch: Any, jp_serverapp: Any, db_url: str
) -> None:
    await ready(jp_fetch)
    ws = await jp_ws_fetch("imagen", "api", "events")
    await message(ws)
    job = await post_job(jp_fetch, {"prompt": "still running at the stop", "options": {"delay_s": 30}})
    await messages_until(ws, lambda m: m.get("job_id") == job["id"] and m.get("status") == "running")
    names = {t.get_name() for t in _imagen_tasks()}
    # the services' own tasks are named, so a leak of any of them shows by name
    assert {"imagen-worker", "imagen-feed-listen", "imagen-feed-read", "imagen-ws-watch"} <= names, names
    assert f"imagen-job-{job['id']}" in names
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("select count(*) from imagen.workers") == 1
        (app,) = jp_serverapp.extension_manager.extension_apps["imagen_canvas_server"]
        await app.stop_extension()
        assert _imagen_tasks() == []
        others = await conn.fetch(
            "select pid, application_name, state, query from pg_stat_activity "
            "where datname = current_database() and pid <> pg_backend_pid()"
        )
        assert [dict(r) for r in others] == []
        assert await conn.fetchval("select count(*) from imagen.workers") == 0  # deregistered
        # the job it was running went back to the queue for another worker
        row = await conn.fetchrow("select status, locked_by from imagen.jobs where id = $1", uuid.UUID(job["id"]))
        assert (row["status"], row["locked_by"]) == ("pending", None)
    finally:
        await conn.close()
    ws.close()


async def _insert_foreign_rows(db_url: str) -> dict[str, str]:
    """Another owner's canvas, job and image, written directly (as the table owner)."""
    other = uuid.uuid4()
    conn = await asyncpg.connect(db_url)
    try:
        canvas_id = await conn.fetchval(
            "insert into imagen.canvases (owner_user_id, name) values ($1, 'theirs') returning id", other
        )
        job_id = await conn.fetchval(
            "insert into imagen.jobs (owner_user_id, prompt, canvas_id) values ($1, 'theirs', $2) returning id",
            other,
            canvas_id,
        )
        image_id = await conn.fetchval(
            "insert into imagen.images (owner_user_id, job_id, bucket, path, content_type, width, height, bytes, sha256) "
            "values ($1, $2, 'images', $3, 'image/png', 1, 1, 1, repeat('0', 64)) returning id",
            other,
            job_id,
            f"{other}/{job_id}.png",
        )
    finally:
        await conn.close()
    return {"canvas": str(canvas_id), "job": str(job_id), "image": str(image_id), "owner": str(other)}


@config(run_worker=False)
async def test_another_owners_jobs_images_and_canvases_are_invisible_through_every_route(
    jp_fetch: Any, db_url: str
) -> None:
    await ready(jp_fetch)
    theirs = await _insert_foreign_rows(db_url)
    mine = await post_job(jp_fetch, {"prompt": "mine"})
    for parts in (
        ("jobs", theirs["job"]),
        ("jobs", theirs["job"], "events"),
        ("images", theirs["image"]),
        ("images", theirs["image"], "content"),
        ("canvases", theirs["canvas"]),
    ):
        status, answer = await api(jp_fetch, *parts)
        assert status == 404, (parts, answer)
    status, answer = await api(jp_fetch, "jobs", theirs["job"], "cancel", method="POST")
    assert status == 404
    status, answer = await api(jp_fetch, "canvases", theirs["canvas"], method="DELETE")
    assert status == 404
    # Saving over their canvas id is refused, and does not touch it.
    status, answer = await api(
        jp_fetch, "canvases", theirs["canvas"], method="PUT", body={"version": 0, "nodes": [], "edges": []}
    )
    assert status == 409 and answer["current"] is None
    _, page = await api(jp_fetch, "jobs")
    assert [j["id"] for j in page["jobs"]] == [mine["id"]]
    _, listing = await api(jp_fetch, "canvases")
    assert listing["canvases"] == []
    _, stats = await api(jp_fetch, "stats")
    assert stats["jobs"] == 1 and stats["counts"]["pending"] == 1
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "select status, name from imagen.jobs j join imagen.canvases c on c.id = j.canvas_id where j.id = $1",
            uuid.UUID(theirs["job"]),
        )
        assert (row["status"], row["name"]) == ("pending", "theirs")
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_queries_for_an_owner_run_under_rls_whatever_they_select(db_url: str) -> None:
    from imagen_worker.db import create_pool
    from imagen_worker.service import as_owner

    theirs = await _insert_foreign_rows(db_url)
    pool = await create_pool(db_url, min_size=1, max_size=1)
    try:
        async with as_owner(pool, uuid.uuid4()) as conn:
            # no owner filter at all: row-level security still hides the other owner's rows
            assert await conn.fetchval("select count(*) from imagen.jobs") == 0
            assert await conn.fetchval("select count(*) from imagen.images") == 0
            assert await conn.fetchval("select count(*) from imagen.canvases") == 0
        async with as_owner(pool, uuid.UUID(theirs["owner"])) as conn:
            assert await conn.fetchval("select count(*) from imagen.jobs") == 1
        # the transaction's role and claims end with it
        async with pool.acquire() as conn:
            assert await conn.fetchval("select current_user") == "postgres"
            assert await conn.fetchval("select current_setting('request.jwt.claims', true)") in (None, "")
    finally:
        await pool.close()


async def test_the_stats_route_reports_the_owners_counts_durations_and_costs(jp_fetch: Any, jp_ws_fetch: Any) -> None:
    await ready(jp_fetch)
    await _done_job(jp_fetch, jp_ws_fetch)
    status, stats = await api(jp_fetch, "stats")
    assert status == 200
    assert stats["counts"]["done"] == 1 and stats["run_seconds"]["n"] == 1
    assert [(m["provider"], m["model"], m["done"]) for m in stats["by_model"]] == [("local", "local-v1", 1)]
    status, answer = await api(jp_fetch, "stats", params={"since": "yesterday"})
    assert status == 400 and answer["error"]["field"] == "since"


WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"replicate-signing-key-for-tests!").decode()


@config(run_worker=False)
async def test_the_webhook_route_takes_signed_deliveries_without_a_session_and_refuses_forged_ones(
    jp_fetch: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from standardwebhooks import Webhook

    await ready(jp_fetch)
    conn = await asyncpg.connect(db_url)
    try:
        job_id = await conn.fetchval(
            "insert into imagen.jobs (owner_user_id, prompt, provider, model, provider_job_id) "
            "values ($1, 'x', 'replicate', 'black-forest-labs/flux-schnell', 'pred-1') returning id",
            uuid.uuid4(),
        )
    finally:
        await conn.close()
    body = json.dumps({"id": "pred-1", "status": "processing", "logs": "50%|"}).encode()
    when = datetime.now(UTC)

    def headers(secret: str, msg_id: str) -> dict[str, str]:
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, when, body.decode()),
            "Authorization": "",
        }

    async def deliver(secret: str, msg_id: str) -> tuple[int, Any]:
        try:
            response = await jp_fetch(
                "imagen", "webhooks", "replicate", method="POST", body=body, headers=headers(secret, msg_id)
            )
        except HTTPClientError as exc:
            assert exc.response is not None
            response = exc.response
        return response.code, json.loads(response.body)

    forged = "whsec_" + base64.b64encode(b"not-the-secret-replicate-uses!!!").decode()
    status, answer = await deliver(forged, "msg-1")
    assert status == 401, answer
    assert answer["error"]["code"] == "unauthorized" and "signature" in answer["error"]["message"]
    status, answer = await deliver(WEBHOOK_SECRET, "msg-2")
    assert status == 200 and answer["status"] == "accepted", answer
    status, answer = await deliver(WEBHOOK_SECRET, "msg-2")
    assert status == 200 and answer["status"] == "duplicate"
    conn = await asyncpg.connect(db_url)
    try:
        assert (
            await conn.fetchval("select count(*) from imagen.job_events where job_id = $1 and kind = 'webhook'", job_id)
            == 1
        )
    finally:
        await conn.close()


SECRET_PASSWORD = "hunter2-correct-horse-battery"


def _missing_database_with_a_password(db_url: str) -> str:
    """A URL of this test's server naming a database that does not exist, with a password in it."""
    base, _, query = db_url.partition("?")
    return (
        f"{base.rsplit('/', 1)[0]}/imagen_missing_{uuid.uuid4().hex[:8]}"
        f"?{query + '&' if query else ''}password={SECRET_PASSWORD}"
    )


@config(run_worker=False, database_url=_missing_database_with_a_password)
async def test_a_start_up_failure_is_reported_in_503s_health_and_the_socket_without_the_database_password(
    jp_fetch: Any, jp_ws_fetch: Any, jp_serverapp: Any
) -> None:
    services = services_of(jp_serverapp)
    assert await services.router_ready() is None
    assert "does not exist" in services.error and SECRET_PASSWORD not in services.error
    for parts in (("health",), ("jobs",)):
        status, answer = await api(jp_fetch, *parts)
        assert status == 503 and answer["error"]["code"] == "unavailable", answer
        assert "does not exist" in answer["error"]["message"]  # still says what is wrong
        assert SECRET_PASSWORD not in json.dumps(answer)
    status, answer = await api(jp_fetch, "jobs", method="POST", body={"prompt": "x"})
    assert status == 503 and SECRET_PASSWORD not in json.dumps(answer)
    try:
        await jp_fetch("imagen", "webhooks", "replicate", method="POST", body=b"{}", headers={"Authorization": ""})
        raise AssertionError("the webhook route answered without its receiver")
    except HTTPClientError as exc:
        assert exc.code == 503 and exc.response is not None
        answer = json.loads(exc.response.body)
    assert answer["error"]["code"] == "unavailable" and SECRET_PASSWORD not in json.dumps(answer)
    ws = await jp_ws_fetch("imagen", "api", "events")
    assert await asyncio.wait_for(ws.read_message(), 10) is None
    assert ws.close_code == 4503 and SECRET_PASSWORD not in (ws.close_reason or "")


NOT_THE_OWNER = {"IMAGEN_OWNER_USER_ID": None, "JUPYTERHUB_USER": None}


async def _owner_of_everything(jp_fetch: Any) -> str:
    """The owner the server acts for, as health reports it and as a job it queues is stamped."""
    health = await ready(jp_fetch)
    job = await post_job(jp_fetch, {"prompt": "whose am I"})
    assert job["owner_user_id"] == health["owner_user_id"]
    return str(health["owner_user_id"])


async def _caller_name(jp_fetch: Any) -> str:
    me = json.loads((await jp_fetch("api", "me")).body)
    return str(me["identity"]["username"])


@config(run_worker=False)
@env(**NOT_THE_OWNER)
async def test_the_single_user_servers_owner_is_the_clis_default_owner(jp_fetch: Any) -> None:
    from imagen_worker.jobs import default_owner_id, hub_owner_id, local_owner_id

    owner = await _owner_of_everything(jp_fetch)
    assert owner == str(default_owner_id()) == str(local_owner_id())  # what `imagen submit` uses
    # jupyter_server names a token's user afresh; the owner never derives from that name
    caller = await _caller_name(jp_fetch)
    assert caller != getpass.getuser()
    assert owner not in (str(local_owner_id(caller)), str(hub_owner_id(caller)))


@config(run_worker=False)
@env(**{**NOT_THE_OWNER, "IMAGEN_OWNER_USER_ID": "0b7e6f3c-9a51-4c55-8e8f-2d1a6a0c5e11"})
async def test_imagen_owner_user_id_sets_the_servers_owner(jp_fetch: Any) -> None:
    from imagen_worker.jobs import local_owner_id

    owner = await _owner_of_everything(jp_fetch)
    assert owner == "0b7e6f3c-9a51-4c55-8e8f-2d1a6a0c5e11" != str(local_owner_id())


@config(run_worker=False)
@env(**{**NOT_THE_OWNER, "JUPYTERHUB_USER": "alice"})
async def test_under_jupyterhub_the_owner_is_the_hub_user_the_server_belongs_to_not_the_caller(
    jp_fetch: Any,
) -> None:
    from imagen_worker.jobs import hub_owner_id, local_owner_id

    owner = await _owner_of_everything(jp_fetch)
    caller = await _caller_name(jp_fetch)
    assert caller != "alice"
    assert owner == str(hub_owner_id("alice"))
    assert owner not in (str(hub_owner_id(caller)), str(local_owner_id()))
