"""JupyterHub benchmark: many users on one hub with a shared worker pool, against one user on the same
hub in the same run. Prints one JSON object. Needs root (it runs a hub and a Postgres cluster).

    .venv/bin/python bench/hub.py [--users 20] [--jobs-per-user 10] [--clicks-per-user 5]

Set-up (tests/hub/harness.py): a PostgreSQL that requires passwords, JupyterHub 6 with
configurable-http-proxy and the shared-pool layout (`imagen worker --scope all`, concurrency 8),
`--users` hub users each with their own database login and server (SimpleLocalProcessSpawner: all
servers run as one Unix user here, since the figures are about load, not isolation), one websocket
per user to their own server, all through the proxy. Jobs are `local` at 64×64.

- throughput: every user queues `--jobs-per-user` jobs at once (POST through the proxy); jobs/s =
  all of them / the time from the first POST to the last `done` on the users' sockets.
- click-to-done: every user, at the same time, clicks `--clicks-per-user` times, one after another
  (POST, then wait for that job's `done` on their socket); the overhead is the click-to-done time
  minus the provider's own time (the `local` provider drawing 64×64, measured here: ~1 ms).
- single user: the same total of jobs and clicks from one user of the same hub.
Every user's server is warmed up first with 3 jobs and 3 clicks, the single user's too.
Target: multi-user jobs/s ≥ 0.8× the single-user figure.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # bench/queue.py would shadow the standard library's queue module
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the harness lives in tests/hub

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp

from tests.hub.harness import Hub, jupyterhub, scram_cluster, spawn, users_venv


def quantiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 2), "p95": round(q[94], 2), "n": len(values)}


def provider_ms() -> float:
    from imagen_worker.providers.local import draw

    times = []
    for i in range(50):
        t = time.perf_counter()
        draw("bench", i, 64, 64)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


class User:
    def __init__(self, hub: Hub, name: str, token: str, session: aiohttp.ClientSession) -> None:
        self.hub, self.name, self.token, self.session = hub, name, token, session
        self.done: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    async def listen(self) -> None:
        ws = await self.session.ws_connect(f"{self.hub.url}user/{self.name}/imagen/api/events", headers=self.headers)
        self.ws = ws
        await ws.receive_json()  # hello
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            msg = json.loads(frame.data)
            if msg.get("kind") == "state" and msg.get("status") == "done":
                now = time.perf_counter()
                self.done[msg["job_id"]] = now
                waiter = self.waiters.pop(msg["job_id"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(now)

    async def post(self) -> str:
        async with self.session.post(
            f"{self.hub.url}user/{self.name}/imagen/api/jobs",
            headers=self.headers,
            json={"prompt": "a fox", "size": "64x64"},
        ) as r:
            assert r.status == 201, await r.text()
            job_id: str = (await r.json())["id"]
            return job_id

    async def click(self) -> float:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        job_id = await self.post()
        if job_id in self.done:
            return (self.done[job_id] - started) * 1000
        waiter = self.waiters.setdefault(job_id, loop.create_future())
        return (await asyncio.wait_for(waiter, 60) - started) * 1000

    async def close(self) -> None:
        await self.ws.close()
        self.task.cancel()


async def run(hub: Hub, tokens: dict[str, str], names: list[str], jobs_each: int, clicks_each: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        users = [User(hub, n, tokens[n], session) for n in names]
        await asyncio.gather(*(u.listen() for u in users))
        started = time.perf_counter()
        queued = await asyncio.gather(*(asyncio.gather(*(u.post() for _ in range(jobs_each))) for u in users))
        wanted = {j for ids in queued for j in ids}
        deadline = time.monotonic() + 300
        while not wanted <= {j for u in users for j in u.done}:
            assert time.monotonic() < deadline, "jobs never finished"
            await asyncio.sleep(0.01)
        last = max(u.done[j] for u, ids in zip(users, queued, strict=True) for j in ids)
        jobs_s = len(wanted) / (last - started)

        async def clicks(u: User) -> list[float]:
            return [await u.click() for _ in range(clicks_each)]

        latencies = [ms for per_user in await asyncio.gather(*(clicks(u) for u in users)) for ms in per_user]
        for u in users:
            await u.close()
    return {"jobs": len(wanted), "jobs_s": round(jobs_s, 1), "click_to_done_ms": quantiles(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--jobs-per-user", type=int, default=10)
    parser.add_argument("--clicks-per-user", type=int, default=5)
    args = parser.parse_args()
    names = tuple(f"bench-user-{i:02d}" for i in range(args.users))
    solo = "bench-solo"
    venv = users_venv()
    with (
        scram_cluster() as cluster,
        jupyterhub(cluster, venv, layout="pool", users=(*names, solo), spawner="simple", pool_concurrency=8) as hub,
    ):
        started = time.perf_counter()
        tokens = {n: spawn(hub, n) for n in (*names, solo)}
        spawn_s = time.perf_counter() - started
        # Warm-up, every user alike: a server's first requests pay its cold start (the pool's first
        # connections, statements prepared, plpgsql compiled in each new session), not the load.
        asyncio.run(run(hub, tokens, [solo], 3, 3))
        asyncio.run(run(hub, tokens, list(names), 3, 3))
        single = asyncio.run(
            run(hub, tokens, [solo], args.jobs_per_user * args.users, args.clicks_per_user * args.users // 4)
        )
        multi = asyncio.run(run(hub, tokens, list(names), args.jobs_per_user, args.clicks_per_user))
    provider = provider_ms()
    for figure in (single, multi):
        figure["overhead_ms"] = {
            k: round(v - provider, 2) if k != "n" else v for k, v in figure["click_to_done_ms"].items()
        }
    print(
        json.dumps(
            {
                "setting": {
                    "users": args.users,
                    "jobs_per_user": args.jobs_per_user,
                    "clicks_per_user": args.clicks_per_user,
                    "pool_concurrency": 8,
                    "provider_ms": round(provider, 2),
                    "spawn_s": round(spawn_s, 1),
                },
                "single_user": single,
                "multi_user": multi,
                "jobs_s_ratio": round(multi["jobs_s"] / single["jobs_s"], 3),
                "p95_overhead_ratio": round(multi["overhead_ms"]["p95"] / single["overhead_ms"]["p95"], 3),
                "meets_target": multi["jobs_s"] / single["jobs_s"] >= 0.8,
            }
        )
    )


if __name__ == "__main__":
    main()
