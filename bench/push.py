"""Push benchmark: commit → websocket delivery, sustained delivery rate and REST `POST jobs`, ours beside
a bare floor, in one run. Prints one JSON object.

    .venv/bin/python bench/push.py [--events 200] [--gap-ms 20] [--rate-events 2000] [--posts 300]

Ours is a real `jupyter server` with the imagen-canvas extension (worker off), reached as a browser
would (token auth). The floor is a bare Tornado server written here: LISTEN on imagen_job_events and
write each notification to every socket (no auth, no replay, no read of the events table); its POST
handler inserts the job row and answers (no auth, no validation). Both run as separate processes on a
database this script creates on PG_ADMIN_DSN and drops at the end; the client (this process) opens
the sockets with aiohttp and commits progress events one at a time over its own connection.

Latency = the moment just before the event's INSERT (autocommit) is sent → the moment each socket
received it, on one clock (the INSERT's round trip, commit included, is inside it: a notification can
reach a socket before the INSERT's answer reaches the client); p50/p99 over every (event, socket)
delivery. Rate = events committed in batches of 100 as fast as the database takes them / the time
until the last socket got the last one. REST `POST jobs`: p50/p99 of sequential requests, each
ratio to the floor's; the server's pending cap is raised to fit `--posts` (no worker takes them).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/push.py`, this folder comes first on sys.path, where bench/queue.py would shadow
# the standard library's queue module.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from typing import Any

import aiohttp
import asyncpg

REPO = Path(__file__).resolve().parents[1]
ADMIN = os.environ.get("PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGETS = {"p50_ms_50_sockets": 5.0, "p99_ms_50_sockets": 25.0, "post_p50_ms": 8.0}
WARM_UP_POSTS = 10


def progress(text: str) -> None:
    print(f"[push] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quantiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 3), "p99": round(q[98], 3), "n": len(values)}


# -- the floor server (run in its own process: `push.py --floor PORT DSN`) ----------------------


def run_floor(port: int, dsn: str) -> None:
    from tornado import web, websocket

    sockets: set[websocket.WebSocketHandler] = set()

    class Events(websocket.WebSocketHandler):
        def open(self, *args: Any, **kwargs: Any) -> None:
            sockets.add(self)

        def on_close(self) -> None:
            sockets.discard(self)

    class Jobs(web.RequestHandler):
        async def post(self) -> None:
            body = json.loads(self.request.body)
            row = await pool.fetchrow(
                "insert into imagen.jobs (owner_user_id, prompt) values ($1, $2) returning id, status",
                uuid.UUID(body["owner_user_id"]),
                body["prompt"],
            )
            self.set_status(201)
            self.finish(json.dumps({"id": str(row["id"]), "status": row["status"]}))

    def notify(_c: object, _pid: int, _channel: str, payload: object) -> None:
        for ws in list(sockets):
            ws.write_message(str(payload))

    async def main() -> None:
        nonlocal pool
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
        listener = await asyncpg.connect(dsn)
        await listener.add_listener("imagen_job_events", notify)
        app = web.Application([(r"/events", Events), (r"/jobs", Jobs)])
        app.listen(port, "127.0.0.1")
        print("ready", flush=True)
        await asyncio.Event().wait()

    pool: Any = None
    asyncio.run(main())


# -- the client ---------------------------------------------------------------------------------


class Sockets:
    """N websocket clients; `received[event_id]` collects each socket's receive time."""

    def __init__(self, session: aiohttp.ClientSession, url: str, n: int, headers: dict[str, str], parse: Any) -> None:
        self.session, self.url, self.n, self.headers, self.parse = session, url, n, headers, parse
        self.received: dict[int, list[float]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ws: list[aiohttp.ClientWebSocketResponse] = []

    async def __aenter__(self) -> Sockets:
        for _ in range(self.n):
            ws = await self.session.ws_connect(self.url, headers=self.headers, max_msg_size=0)
            self._ws.append(ws)
            self._tasks.append(asyncio.create_task(self._read(ws)))
        await asyncio.sleep(0.3)  # every socket subscribed (ours: hello sent) before events start
        return self

    async def __aexit__(self, *_: object) -> None:
        for ws in self._ws:
            await ws.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            now = time.perf_counter()
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            for event_id in self.parse(msg.data):
                self.received.setdefault(event_id, []).append(now)

    async def wait_for(self, event_ids: list[int], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while any(len(self.received.get(e, ())) < self.n for e in event_ids):
            if time.monotonic() > deadline:
                missing = sum(1 for e in event_ids if len(self.received.get(e, ())) < self.n)
                raise TimeoutError(f"{missing} events not delivered to all {self.n} sockets")
            await asyncio.sleep(0.005)


def parse_ours(text: str) -> list[int]:
    msg = json.loads(text)
    return [msg["event_id"]] if "event_id" in msg else []


def parse_floor(text: str) -> list[int]:
    return [e["event_id"] for e in json.loads(text)]


INSERT_EVENT = (
    "insert into imagen.job_events (job_id, owner_user_id, kind, payload) "
    "select id, owner_user_id, 'progress', jsonb_build_object('progress', $2::float8) from imagen.jobs where id = $1 "
    "returning id"
)
INSERT_EVENTS = (
    "insert into imagen.job_events (job_id, owner_user_id, kind, payload) "
    "select j.id, j.owner_user_id, 'progress', jsonb_build_object('progress', g / 100000.0) "
    "from imagen.jobs j, generate_series(1, $2::int) g where j.id = $1 returning id"
)


async def latency(
    conn: asyncpg.Connection, socks: Sockets, job_id: uuid.UUID, events: int, gap: float
) -> dict[str, float]:
    sent: dict[int, float] = {}
    for i in range(events):
        before = time.perf_counter()  # before the round trip: the event may arrive before fetchval returns
        event_id = await conn.fetchval(INSERT_EVENT, job_id, i / 100000)
        sent[event_id] = before
        await asyncio.sleep(gap)
    await socks.wait_for(list(sent))
    delays = [(t - sent[e]) * 1000 for e in sent for t in socks.received[e]]
    assert min(delays) >= 0, "a delivery before its send: the clocks are not one"
    return quantiles(delays)


async def rate(conn: asyncpg.Connection, socks: Sockets, job_id: uuid.UUID, events: int) -> float:
    started = time.perf_counter()
    ids: list[int] = []
    for _ in range(events // 100):
        ids += [r["id"] for r in await conn.fetch(INSERT_EVENTS, job_id, 100)]
    await socks.wait_for(ids, timeout=120)
    last = max(max(socks.received[e]) for e in ids)
    return round(len(ids) / (last - started), 1)


async def posts(
    session: aiohttp.ClientSession, url: str, n: int, headers: dict[str, str], body: dict[str, Any]
) -> dict[str, float]:
    times = []
    for i in range(n + WARM_UP_POSTS):
        t = time.perf_counter()
        async with session.post(url, json={**body, "prompt": f"bench {i}"}, headers=headers) as resp:
            await resp.read()
            assert resp.status == 201, resp.status
        if i >= WARM_UP_POSTS:
            times.append((time.perf_counter() - t) * 1000)
    return quantiles(times)


def launch(command: list[str], env: dict[str, str], log: Path, stdout: int) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(command, env=env, stdout=stdout, stderr=err)


async def wait_http(url: str, headers: dict[str, str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(url, headers=headers) as r:
                    if r.status == 200:
                        body = await r.json()
                        if not body.get("error"):
                            return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer")
            await asyncio.sleep(0.2)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    name = f"imagen_push_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'create database "{name}"')
    await admin.close()
    base, _, rest = ADMIN.rpartition("/")
    dsn = f"{base}/{name}" + ("?" + rest.split("?", 1)[1] if "?" in rest else "")
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="imagen-push-"))
    try:
        from imagen_worker.db import connect

        (await connect(dsn)).terminate()  # migrate
        port, floor_port, token = free_port(), free_port(), secrets.token_hex(16)
        env = {**os.environ, "IMAGEN_DATA_DIR": str(tmp / "data"), "IMAGEN_DATABASE_URL": dsn}
        jupyter = [
            sys.executable,
            "-m",
            "jupyter",
            "server",
            f"--port={port}",
            "--ip=127.0.0.1",
            "--no-browser",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp}",
            "--ImagenCanvasApp.run_worker=False",
            # Room for every POST of the run (no worker takes them): the default cap of 500 pending jobs
            # per owner would answer 429 past it.
            f"--ImagenCanvasApp.max_pending_jobs={max(500, args.posts + WARM_UP_POSTS + 10)}",
            "--ServerApp.log_level=WARN",
        ]
        if os.geteuid() == 0:
            jupyter.append("--allow-root")
        procs.append(await asyncio.to_thread(launch, jupyter, env, tmp / "jupyter.log", subprocess.DEVNULL))
        floor_cmd = [sys.executable, __file__, "--floor", str(floor_port), dsn]
        procs.append(await asyncio.to_thread(launch, floor_cmd, dict(os.environ), tmp / "floor.log", subprocess.PIPE))
        auth = {"Authorization": f"token {token}"}
        ours = f"http://127.0.0.1:{port}/imagen/api"
        await wait_http(f"{ours}/health", auth)
        assert procs[1].stdout is not None
        await asyncio.to_thread(procs[1].stdout.readline)
        progress("both servers up")

        out: dict[str, Any] = {
            "setting": {
                "events": args.events,
                "gap_ms": args.gap_ms,
                "rate_events": args.rate_events,
                "posts": args.posts,
            }
        }
        # No connection cap (aiohttp's default of 100 would hold the 101st socket back).
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async with session.get(f"{ours}/health", headers=auth) as r:
                owner = (await r.json())["owner_user_id"]
            async with session.post(f"{ours}/jobs", json={"prompt": "the events' job"}, headers=auth) as r:
                job_id = uuid.UUID((await r.json())["id"])
            conn = await asyncpg.connect(dsn)
            try:
                for n in (1, 50, 200):
                    progress(f"delivery with {n} sockets")
                    async with Sockets(session, f"ws://127.0.0.1:{port}/imagen/api/events", n, auth, parse_ours) as s:
                        mine = await latency(conn, s, job_id, args.events, args.gap_ms / 1000)
                    async with Sockets(session, f"ws://127.0.0.1:{floor_port}/events", n, {}, parse_floor) as s:
                        floor = await latency(conn, s, job_id, args.events, args.gap_ms / 1000)
                    out[f"delivery_{n}_sockets_ms"] = {
                        "ours": mine,
                        "floor": floor,
                        "ratio_p50": round(mine["p50"] / floor["p50"], 2),
                        "ratio_p99": round(mine["p99"] / floor["p99"], 2),
                    }
                progress("rate")
                async with Sockets(session, f"ws://127.0.0.1:{port}/imagen/api/events", 50, auth, parse_ours) as s:
                    mine_rate = await rate(conn, s, job_id, args.rate_events)
                async with Sockets(session, f"ws://127.0.0.1:{floor_port}/events", 50, {}, parse_floor) as s:
                    floor_rate = await rate(conn, s, job_id, args.rate_events)
                out["rate_50_sockets_events_s"] = {
                    "ours": mine_rate,
                    "floor": floor_rate,
                    "ratio": round(mine_rate / floor_rate, 2),
                }
            finally:
                await conn.close()
            progress("POST jobs")
            mine_post = await posts(session, f"{ours}/jobs", args.posts, auth, {})
            floor_post = await posts(
                session, f"http://127.0.0.1:{floor_port}/jobs", args.posts, {}, {"owner_user_id": owner}
            )
            out["post_jobs_ms"] = {
                "ours": mine_post,
                "floor": floor_post,
                "ratio_p50": round(mine_post["p50"] / floor_post["p50"], 2),
                "ratio_p99": round(mine_post["p99"] / floor_post["p99"], 2),
            }
        d50 = out["delivery_50_sockets_ms"]["ours"]
        out["meets_targets"] = {
            "p50_ms_50_sockets": d50["p50"] <= TARGETS["p50_ms_50_sockets"],
            "p99_ms_50_sockets": d50["p99"] <= TARGETS["p99_ms_50_sockets"],
            "post_p50_ms": out["post_jobs_ms"]["ours"]["p50"] <= TARGETS["post_p50_ms"],
        }
        return out
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(15)
        admin = await asyncpg.connect(ADMIN)
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    parser.add_argument("--rate-events", type=int, default=2000)
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--floor", nargs=2, metavar=("PORT", "DSN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        run_floor(int(args.floor[0]), args.floor[1])
        return
    print(json.dumps(asyncio.run(bench(args))))


if __name__ == "__main__":
    main()
