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
            (r["id"], str(r["job_id"]))
            for r in await conn.fetch(
                "select id, job_id from imagen.job_events "
                "where job_id = any($1::uuid[]) and kind in ('state', 'progress', 'waiting') order by id",
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
    assert sorted(got) == [e for e, _ in expected], "an event was lost"
    # Delivered in order: each job's events as its trail has them (ids are not in commit order across
    # jobs, ADR 0006, but one job's transitions are), so no job is seen done before it ran.
    for job_id in jobs:
        trail = [e for e, j in expected if j == job_id]
        assert [m["event_id"] for m in received if m["job_id"] == job_id] == trail, f"job {job_id} out of order"
        states = [m["status"] for m in received if m["job_id"] == job_id and m["kind"] == "state"]
        assert states[0] == "pending" and states[-1] == "done" and "running" in states, states
    ws.close()


async def _listen_backend(conn: asyncpg.Connection) -> int | None:
    """The pid of the event feed's LISTEN connection (the only backend of this database that LISTENs:
    the worker is off), or None while there is none."""
    pid: int | None = await conn.fetchval(
        "select pid from pg_stat_activity where datname = current_database() and query ilike 'listen %'"
    )
    return pid


@config(run_worker=False)
async def test_a_killed_listen_connection_loses_no_event_and_repeats_none_in_order(
    jp_fetch: Any, jp_ws_fetch: Any, jp_serverapp: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagen_worker.service import feed as feed_module

    # No safety read (every 5 s) to hide a LISTEN that was never restored: notifications, and the read
    # the feed makes when it listens again, must deliver everything.
    monkeypatch.setattr(feed_module, "SAFETY_READ_SECONDS", 3600.0)
    await ready(jp_fetch)
    _, job = await api(jp_fetch, "jobs", method="POST", body={"prompt": "x"})
    job_id = uuid.UUID(job["id"])
    ws = await jp_ws_fetch("imagen", "api", "events")
    await message(ws)
    writer = await asyncpg.connect(db_url)
    admin = await asyncpg.connect(db_url)
    written: list[int] = []

    async def commit_events(n: int, pause: float) -> None:
        for _ in range(n):
            written.append(
                await writer.fetchval(
                    "insert into imagen.job_events (job_id, owner_user_id, kind, payload) "
                    "select id, owner_user_id, 'progress', jsonb_build_object('progress', $2::float8) "
                    "from imagen.jobs where id = $1 returning id",
                    job_id,
                    len(written) / 1000,
                )
            )
            await asyncio.sleep(pause)

    try:
        await commit_events(30, 0.005)
        listener = await _listen_backend(admin)
        assert listener is not None
        # Kill only the feed's LISTEN connection, and commit events the moment it is gone (before the
        # feed listens again, most likely): only the read the feed makes on listening again finds them.
        gap = writer.transaction()
        await gap.start()
        await commit_events(10, 0)
        assert await admin.fetchval("select pg_terminate_backend($1)", listener)
        while await admin.fetchval("select count(*) from pg_stat_activity where pid = $1", listener):
            await asyncio.sleep(0.001)
        await gap.commit()
        deadline = time.monotonic() + 10
        while (pid := await _listen_backend(admin)) in (None, listener):
            assert time.monotonic() < deadline, "the feed never listened again"
            await asyncio.sleep(0.02)
        got = [await message(ws) for _ in written]
        assert [m["event_id"] for m in got] == written  # every event, once, in commit order
        # and live again, on the new LISTEN connection
        await commit_events(10, 0.005)
        got = [await message(ws) for _ in written[40:]]
        assert [m["event_id"] for m in got] == written[40:]
        with pytest.raises(TimeoutError):
            await message(ws, 1.0)  # nothing repeated
        assert pid != listener
    finally:
        await writer.close()
        await admin.close()
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
    """The code of the close frame in a stream of server frames, if one has arrived whole."""
    i = 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        width = {126: 2, 127: 8}.get(length, 0)
        if i + width > len(data):
            return None  # the rest of this frame's header has not arrived yet
        if width:
            length = int.from_bytes(data[i : i + width], "big")
            i += width
        if opcode == 0x8:
            return int.from_bytes(data[i : i + 2], "big") if i + 2 <= len(data) else None
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
    assert _close_code(b"\x81\x7e\x01") is None  # a header cut short
    assert _close_code(b"\x88\x02\x0f") is None
