"""The event socket under faults: events committed out of id order, a Postgres restart with sockets
open, and a socket that never reads."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ..helpers import restart_postgres
from ..server_helpers import api, finished, message, messages_until, ready


@pytest.fixture
def imagen_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(getattr(request, "param", {}))


@pytest.fixture
def database(request: pytest.FixtureRequest, db_url: str) -> str:
    """The database the server uses: the test's own (default), or `embedded_server`'s when asked for."""
    if "embedded_server" in request.fixturenames:
        url: str = request.getfixturevalue("embedded_server")[0]
        return url
    return db_url


@pytest.fixture
def jp_server_config(
    database: str, data_dir: Path, imagen_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    monkeypatch.setenv("IMAGEN_DATA_DIR", str(data_dir))
    return {
        "ServerApp": {"jpserver_extensions": {"imagen_canvas_server": True}},
        "ImagenCanvasApp": {"database_url": database, "poll_interval": 0.5, **imagen_config},
    }


@pytest.fixture(autouse=True)
def _extension_stops_first(jp_serverapp: Any, jp_asyncio_loop: Any, database: str) -> Any:
    yield
    for app in jp_serverapp.extension_manager.extension_apps.get("imagen_canvas_server", ()):
        jp_asyncio_loop.run_until_complete(app.stop_extension())


def config(**values: Any) -> Any:
    return pytest.mark.parametrize("imagen_config", [values], indirect=True)


def services(jp_serverapp: Any) -> Any:
    return jp_serverapp.web_app.settings["imagen"]


@config(run_worker=False)
async def test_an_event_committed_after_a_later_id_still_reaches_a_client_that_resumed_past_it(
    jp_fetch: Any, jp_ws_fetch: Any, jp_serverapp: Any, db_url: str
) -> None:
    await ready(jp_fetch)
    _, job = await api(jp_fetch, "jobs", method="POST", body={"prompt": "x"})
    job_id = uuid.UUID(job["id"])
    ws = await jp_ws_fetch("imagen", "api", "events")
    await message(ws)
    slow = await asyncpg.connect(db_url)
    fast = await asyncpg.connect(db_url)
    try:
        # The slow transaction takes its event id first and commits last.
        tx = slow.transaction()
        await tx.start()
        early_id = await slow.fetchval(
            "insert into imagen.job_events (job_id, owner_user_id, kind, payload) "
            "select id, owner_user_id, 'progress', '{\"progress\": 0.25}' from imagen.jobs where id = $1 returning id",
            job_id,
        )
        late_id = await fast.fetchval(
            "insert into imagen.job_events (job_id, owner_user_id, kind, payload) "
            "select id, owner_user_id, 'progress', '{\"progress\": 0.5}' from imagen.jobs where id = $1 returning id",
            job_id,
        )
        assert early_id < late_id
        late = await message(ws)
        assert late["event_id"] == late_id
        ws.close()  # the client leaves right after the later id
        await tx.commit()
        ws = await jp_ws_fetch("imagen", "api", "events", params={"since": late["cursor"]})
        assert (await message(ws))["kind"] == "hello"
        early = await message(ws)
        assert early["event_id"] == early_id and early["progress"] == 0.25
        # nothing else: the later event is not repeated
        await fast.execute(
            "insert into imagen.job_events (job_id, owner_user_id, kind, payload) "
            "select id, owner_user_id, 'progress', '{\"progress\": 0.75}' from imagen.jobs where id = $1",
            job_id,
        )
        assert (await message(ws))["progress"] == 0.75
    finally:
        await slow.close()
        await fast.close()
    ws.close()


async def test_a_postgres_restart_with_a_socket_open_loses_no_event_of_jobs_finishing_around_it(
    jp_fetch: Any, jp_ws_fetch: Any, embedded_server: tuple[str, Path, str | None]
) -> None:
    url, pgdata, system_user = embedded_server
    await ready(jp_fetch)
    ws = await jp_ws_fetch("imagen", "api", "events")
    await message(ws)
    jobs = []
    for delay in (0.3, 0.6, 0.9, 1.2, 1.5):
        _, job = await api(
            jp_fetch, "jobs", method="POST", body={"prompt": f"around {delay}", "options": {"delay_s": delay}}
        )
        jobs.append(job["id"])
    await asyncio.sleep(0.4)
    await restart_postgres(pgdata, system_user, "fast")
    received: list[dict[str, Any]] = []
    pending = set(jobs)
    deadline = time.monotonic() + 60
    while pending:
        if time.monotonic() > deadline:
            conn = await asyncpg.connect(url)
            rows = await conn.fetch("select id, status, attempts, error from imagen.jobs")
            await conn.close()
            raise AssertionError(f"no terminal event for {pending}; jobs {[dict(r) for r in rows]}; got {received}")
        try:
            msg = await message(ws, deadline - time.monotonic())
        except TimeoutError:
            continue
        if msg.get("job_id") in jobs:
            received.append(msg)
            if finished(msg["job_id"])(msg):
                pending.discard(msg["job_id"])
    conn = await asyncpg.connect(url)
    try:
        expected = [
            r["id"]
            for r in await conn.fetch(
                "select id from imagen.job_events where job_id = any($1::uuid[]) and kind in ('state', 'progress', 'waiting') "
                "order by id",
                [uuid.UUID(j) for j in jobs],
            )
        ]
        statuses = dict(
            await conn.fetch(
                "select id::text, status from imagen.jobs where id = any($1::uuid[])", [uuid.UUID(j) for j in jobs]
            )
        )
    finally:
        await conn.close()
    assert set(statuses.values()) == {"done"}
    got = [m["event_id"] for m in received]
    assert len(got) == len(set(got)), "an event was delivered twice"
    assert sorted(got) == expected, "an event was lost"
    for job_id in jobs:
        states = [m["status"] for m in received if m["job_id"] == job_id and m["kind"] == "state"]
        assert states[-1] == "done" and "running" in states
    ws.close()


def _raw_socket_that_never_reads(port: int, path: str, token: str) -> socket.socket:
    """A websocket client that completes the handshake and then never reads (a tiny receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: token {token}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _close_code(data: bytes) -> int | None:
    """The code of the close frame in a stream of server frames, if one is there."""
    i = 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length == 126:
            length = struct.unpack(">H", data[i : i + 2])[0]
            i += 2
        elif length == 127:
            length = struct.unpack(">Q", data[i : i + 8])[0]
            i += 8
        if opcode == 0x8 and length >= 2:
            return int(struct.unpack(">H", data[i : i + 2])[0])
        i += length
    return None


@config(run_worker=False, websocket_send_buffer=16384, websocket_queue=300)
async def test_a_socket_that_never_reads_is_closed_while_another_keeps_receiving(
    jp_fetch: Any, jp_ws_fetch: Any, jp_serverapp: Any, jp_http_port: int, jp_base_url: str, db_url: str
) -> None:
    await ready(jp_fetch)
    _, job = await api(jp_fetch, "jobs", method="POST", body={"prompt": "x"})
    stalled = await asyncio.to_thread(
        _raw_socket_that_never_reads,
        jp_http_port,
        f"{jp_base_url}imagen/api/events",
        jp_serverapp.identity_provider.token,
    )
    reader = await jp_ws_fetch("imagen", "api", "events")
    await message(reader)
    feed = services(jp_serverapp).feed
    conn = await asyncpg.connect(db_url)
    try:
        batches, size = 20, 100
        for b in range(batches):
            await conn.execute(
                "insert into imagen.job_events (job_id, owner_user_id, kind, payload) "
                "select j.id, j.owner_user_id, 'progress', jsonb_build_object('progress', g / 10000.0, 'message', "
                "'step ' || g || ' of a long render that reports its progress often') "
                "from imagen.jobs j, generate_series($2::int, $3::int) g where j.id = $1",
                uuid.UUID(job["id"]),
                b * size + 1,
                (b + 1) * size,
            )
            # the reading socket gets each batch while the stalled one's backlog grows
            got = [await message(reader, 10) for _ in range(size)]
            assert [m["progress"] for m in got] == [g / 10000 for g in range(b * size + 1, (b + 1) * size + 1)]
        assert feed.stats["overflows"] == 1, "the stalled socket was never dropped"
        stalled.setblocking(False)
        data = b""
        deadline = time.monotonic() + 10
        while _close_code(data) is None and time.monotonic() < deadline:
            try:
                chunk = stalled.recv(1 << 16)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            if not chunk:
                break
            data += chunk
        assert _close_code(data) == 4000
        # the reader goes on, live
        await api(jp_fetch, "jobs", job["id"], "cancel", method="POST")
        assert (await messages_until(reader, finished(job["id"])))[-1]["status"] == "cancelled"
    finally:
        await conn.close()
        stalled.close()
    reader.close()


def test_close_code_parser_reads_a_close_frame() -> None:
    frame = b"\x81\x02hi" + b"\x88\x04" + struct.pack(">H", 4000) + b"ok"
    assert _close_code(frame) == 4000
    assert _close_code(b"\x81\x02hi") is None
