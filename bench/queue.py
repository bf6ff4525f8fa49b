"""Queue benchmark: imagen-worker measured exactly as ../shared/peers measures the peer queues.

    .venv/bin/python bench/queue.py                 # ours: one JSON line
    .venv/bin/python bench/queue.py --with-peers    # + floor.py and the peers, same run, with ratios
    .venv/bin/python bench/queue.py --rss           # + peak RSS of an `imagen worker` with 1,000 jobs in flight
    RUNS=4 .venv/bin/python bench/queue.py --latency-only   # pickup latency alone, for A/B comparisons
    RUNS=3 PEERS_DIR=... .venv/bin/python bench/queue.py --with-peers   # each run: ours, fairness, floor, peers; medians

Throughput: N (5000) no-op jobs bulk-inserted in one statement, then the clock starts just before
the worker starts; `throughput_jobs_s` = N / time until the database shows every job done (checked
every 5 ms), `throughput_body_jobs_s` = N / time until the last handler ran. Concurrency CONC (10).
Latency: the same worker idle 1 s and listening; LAT_N (200) jobs inserted one at a time, GAP_MS (20)
apart, over a separate connection; latency = time from just before the INSERT to the handler's start.
Leases, heartbeats, the reaper and the job_events rows of every transition are all on.
Fairness (ADR 0007), in the same run: `fair_throughput_jobs_s`, the throughput measurement with the N
jobs spread over 10 owners, interleaved; `interactive_wait_ms`, insert -> handler start of LAT_N / 2
interactive jobs queued one at a time (GAP_MS * 2 apart) while the worker drains a 5,000-job batch
backlog whose jobs each take BATCH_JOB_MS (20) of handler time.
Env: PG_ADMIN_DSN (postgresql://postgres@127.0.0.1:5432/postgres), N, LAT_N, GAP_MS, CONC, PREFETCH
(default CONC: claims of CONC jobs, as pgqueuer's batch_size), RUNS.
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder heads sys.path and this file would shadow the standard
# library's `queue` (which asyncio's thread pool imports). Drop that entry before anything else.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    sys.path.pop(0)

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from imagen_worker.db import init_connection
from imagen_worker.migrate import migrate
from imagen_worker.queue import JobContext, Worker, WorkerConfig
from imagen_worker.scheduling import BATCH, INTERACTIVE

ADMIN = os.environ.get("PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
N = int(os.environ.get("N", 5000))
LAT_N = int(os.environ.get("LAT_N", 200))
GAP = float(os.environ.get("GAP_MS", 20)) / 1000
CONC = int(os.environ.get("CONC", 10))
# Claims of CONC jobs, like pgqueuer's batch_size=CONC: at most CONC handlers run, and up to
# PREFETCH more jobs are claimed ahead of a free slot.
PREFETCH = int(os.environ.get("PREFETCH", CONC))
OWNER = "00000000-0000-4000-8000-0000000000be"
BACKLOG = 5000
BATCH_JOB_S = float(os.environ.get("BATCH_JOB_MS", 20)) / 1000
HERE = Path(__file__).resolve().parent
PEERS = HERE.parent.parent / "shared" / "peers"
now = time.perf_counter


async def fresh_db(name: str) -> str:
    conn = await asyncpg.connect(ADMIN)
    await conn.execute(f"drop database if exists {name} with (force)")
    await conn.execute(f"create database {name}")
    await conn.close()
    dsn = ADMIN.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    await conn.close()
    return dsn


def quantiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 2), "p95": round(q[94], 2), "p99": round(q[98], 2), "max": round(max(values), 2)}


class Bodies:
    """The benchmark's handler: counts `noop` jobs (setting `all_done` at `n`), works BATCH_JOB_S (±50 %)
    on `batch` jobs, and records when each numbered job started."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.done = 0
        self.all_done = asyncio.Event()
        self.started: dict[int, float] = {}

    async def __call__(self, ctx: JobContext) -> None:
        if ctx.job.prompt == "noop":
            self.done += 1
            if self.done == self.n:
                self.all_done.set()
        elif ctx.job.prompt == "batch":
            await asyncio.sleep(BATCH_JOB_S * random.uniform(0.5, 1.5))
        else:
            self.started[int(ctx.job.prompt)] = now()


async def drain(db: asyncpg.Connection, bodies: Bodies, t_start: float) -> tuple[float, float]:
    """Seconds from t_start until the last `noop` body ran, and until the database shows no job left."""
    if bodies.n:
        await bodies.all_done.wait()
    t_bodies = now()
    while await db.fetchval("select exists (select 1 from imagen.jobs where status in ('pending', 'running'))"):
        await asyncio.sleep(0.005)
    return t_bodies - t_start, now() - t_start


async def pickups(dsn: str, bodies: Bodies, count: int, gap: float, priority: int) -> dict[str, float]:
    """Queue `count` numbered jobs one at a time, `gap` s apart, over a connection of their own; each one's
    INSERT -> handler start, in ms."""
    producer = await asyncpg.connect(dsn)
    sent: dict[int, float] = {}
    t0 = now()
    for i in range(count):
        await asyncio.sleep(max(0.0, t0 + i * gap - now()))
        sent[i] = now()
        await producer.execute(
            "insert into imagen.jobs (owner_user_id, prompt, priority) values ($1, $2, $3)", OWNER, str(i), priority
        )
    deadline = now() + 30
    while len(bodies.started) < count and now() < deadline:
        await asyncio.sleep(0.01)
    await producer.close()
    out = quantiles([(bodies.started[i] - sent[i]) * 1000 for i in range(count) if i in bodies.started])
    out["received"] = len(bodies.started)
    return out


async def bench_ours(latency_only: bool = False) -> dict[str, Any]:
    dsn = await fresh_db("bench_imagen")
    db = await asyncpg.connect(dsn)
    await init_connection(db)
    n = 0 if latency_only else N
    await db.execute(
        "insert into imagen.jobs (owner_user_id, prompt) select $1, 'noop' from generate_series(1, $2)", OWNER, n
    )  # one bulk INSERT
    bodies = Bodies(n)
    worker = Worker(dsn, bodies, WorkerConfig(concurrency=CONC, prefetch=PREFETCH))
    t_start = now()
    task = asyncio.create_task(worker.run())
    bodies_s, acked_s = await drain(db, bodies, t_start)
    events = await db.fetchval("select count(*) from imagen.job_events")
    await asyncio.sleep(1.0)  # idle, listening
    latency = await pickups(dsn, bodies, LAT_N, GAP, INTERACTIVE)
    worker.stop()
    await task
    await db.close()
    if latency_only:
        return {"peer": "imagen-worker", "latency_ms": latency, "lat_n": LAT_N, "concurrency": CONC}
    return {
        "peer": "imagen-worker",
        "throughput_jobs_s": round(N / acked_s, 1),
        "throughput_body_jobs_s": round(N / bodies_s, 1),
        "latency_ms": latency,
        "n": N,
        "lat_n": LAT_N,
        "concurrency": CONC,
        "job_events_rows": events,
        "setting": f"concurrency={CONC}, prefetch={PREFETCH}, leases+heartbeat+reaper+events on",
    }


async def bench_fairness() -> dict[str, Any]:
    """Throughput with ten owners' jobs interleaved, and the wait of interactive jobs behind a batch backlog."""
    dsn = await fresh_db("bench_imagen_fair")
    db = await asyncpg.connect(dsn)
    await init_connection(db)
    owners = [f"00000000-0000-4000-8000-{k:012x}" for k in range(1, 11)]
    await db.execute(
        "insert into imagen.jobs (owner_user_id, prompt) select ($1::uuid[])[1 + g % 10], 'noop'"
        " from generate_series(0, $2 - 1) g",
        owners,
        N,
    )  # one bulk INSERT, owners interleaved
    bodies = Bodies(N)
    worker = Worker(dsn, bodies, WorkerConfig(concurrency=CONC, prefetch=PREFETCH))
    t_start = now()
    task = asyncio.create_task(worker.run())
    _, acked_s = await drain(db, bodies, t_start)

    await db.execute(
        "insert into imagen.jobs (owner_user_id, prompt, priority) select $1, 'batch', $2 from generate_series(1, $3)",
        OWNER,
        BATCH,
        BACKLOG,
    )
    while await db.fetchval("select count(*) < 200 from imagen.jobs where prompt = 'batch' and status <> 'pending'"):
        await asyncio.sleep(0.01)
    wait = await pickups(dsn, bodies, LAT_N // 2, 2 * GAP, INTERACTIVE)
    backlog_left = await db.fetchval("select count(*) from imagen.jobs where prompt = 'batch' and status = 'pending'")
    worker.stop()
    await task
    await db.close()
    return {
        "peer": "imagen-worker fairness",
        "fair_throughput_jobs_s": round(N / acked_s, 1),
        "owners": len(owners),
        "interactive_wait_ms": wait,
        "batch_backlog": BACKLOG,
        "batch_left_pending_at_end": backlog_left,
        "batch_job_ms": BATCH_JOB_S * 1000,
    }


def run_json_lines(cmd: list[str], cwd: Path) -> list[dict[str, Any]]:
    env = dict(os.environ, PG_ADMIN_DSN=ADMIN)
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    if out.returncode != 0:
        print(json.dumps({"error": f"{' '.join(cmd)} failed", "stderr": out.stderr[-2000:]}), file=sys.stderr)
        return []
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def peers_dir() -> Path:
    """A writable copy of ../shared/peers with its .venv and node_modules (set up once, reused)."""
    target = Path(os.environ.get("PEERS_DIR", Path(tempfile.gettempdir()) / "imagen-bench-peers"))
    if not (target / ".venv" / "bin" / "python").exists():
        shutil.copytree(PEERS, target, dirs_exist_ok=True)
        subprocess.run(["bash", "setup.sh"], cwd=target, check=True, timeout=1800)
    return target


def run_peers() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    d = peers_dir()
    py = str(d / ".venv" / "bin" / "python")
    floor: dict[str, Any] = {}
    for line in run_json_lines([py, "floor.py"], d):
        floor.update(line)
    results: list[dict[str, Any]] = []
    results += run_json_lines([py, "bench_pgqueuer.py"], d)
    results += run_json_lines([py, "bench_procrastinate.py"], d)
    if (d / "node_modules" / "graphile-worker").exists() and shutil.which("node"):
        results += run_json_lines(["node", "bench_graphile_worker.js"], d)
    return results, floor


def summarize(
    ours: list[dict[str, Any]], fair: list[dict[str, Any]], peers: list[dict[str, Any]], floors: list[dict[str, Any]]
) -> dict[str, Any]:
    """Medians over the runs, ours against each peer and the floor, all measured in this run."""
    med = statistics.median
    ours_tp = med(o["throughput_jobs_s"] for o in ours)
    p50 = med(o["latency_ms"]["p50"] for o in ours)
    p99 = med(o["latency_ms"]["p99"] for o in ours)
    by_peer: dict[str, dict[str, float]] = {}
    for name in sorted({p["peer"] for p in peers}):
        mine = [p for p in peers if p["peer"] == name]
        by_peer[name] = {
            "throughput_jobs_s": med(p["throughput_jobs_s"] for p in mine),
            "pickup_p50_ms": med(p["latency_ms"]["p50"] for p in mine),
            "pickup_p99_ms": med(p["latency_ms"]["p99"] for p in mine),
        }
    summary: dict[str, Any] = {
        "summary": "imagen-worker vs peers and floor, same run, medians of the runs",
        "runs": len(ours),
        "ours": {"throughput_jobs_s": ours_tp, "pickup_p50_ms": p50, "pickup_p99_ms": p99},
        "peers": by_peer,
    }
    if by_peer:
        best = max(by_peer, key=lambda k: by_peer[k]["throughput_jobs_s"])
        summary["best_peer"] = best
        summary["throughput_ratio_to_best_peer"] = round(ours_tp / by_peer[best]["throughput_jobs_s"], 2)
        summary["pickup_p50_at_or_below_every_peer"] = all(p50 <= v["pickup_p50_ms"] for v in by_peer.values())
        best_p99 = min(v["pickup_p99_ms"] for v in by_peer.values())
        summary["pickup_p99_ratio_to_best_peer_p99"] = round(p99 / best_p99, 2)
        if fair:
            fair_tp = med(f["fair_throughput_jobs_s"] for f in fair)
            summary["fair_throughput_jobs_s"] = fair_tp
            summary["fair_throughput_ratio_to_best_peer"] = round(fair_tp / by_peer[best]["throughput_jobs_s"], 2)
    if fair:
        wait50 = med(f["interactive_wait_ms"]["p50"] for f in fair)
        summary["interactive_wait_ms"] = {"p50": wait50, "p99": med(f["interactive_wait_ms"]["p99"] for f in fair)}
        summary["interactive_wait_p50_ratio_to_idle_pickup_p50"] = round(wait50 / p50, 2)
    if floors:
        floor_tp = med(f["floor_throughput_jobs_s"] for f in floors)
        summary["throughput_ratio_to_floor"] = round(ours_tp / floor_tp, 2)
        summary["pickup_p50_ratio_to_floor"] = round(p50 / med(f["floor_pickup_ms"]["p50"] for f in floors), 2)
        summary["pickup_p99_ratio_to_floor"] = round(p99 / med(f["floor_pickup_ms"]["p99"] for f in floors), 2)
    return summary


def worker_rss(in_flight: int = 1000) -> dict[str, Any]:
    """Peak RSS of a real `imagen worker` holding `in_flight` jobs at once (local provider, slow mode)."""
    dsn = asyncio.run(fresh_db("bench_imagen_rss"))
    data = Path(tempfile.mkdtemp(prefix="imagen-rss-"))
    env = dict(os.environ, IMAGEN_DATABASE_URL=dsn, IMAGEN_DATA_DIR=str(data))
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagen_worker", "worker", "--concurrency", str(in_flight), "--log-level", "warning"],
        env=env,
    )

    async def load() -> tuple[int, float]:
        conn = await asyncpg.connect(dsn)
        await conn.execute(
            """insert into imagen.jobs (owner_user_id, prompt, spec)
               select $1, 'rss ' || g, '{"size": "64x64", "options": {"delay_s": 4}}'::jsonb from generate_series(1, $2) g""",
            OWNER,
            in_flight,
        )
        peak_running = 0
        t0 = now()
        while True:
            running, left = await conn.fetchrow(
                "select count(*) filter (where status = 'running'), count(*) filter (where status in ('pending', 'running')) from imagen.jobs"
            )
            peak_running = max(peak_running, running)
            if left == 0 or now() - t0 > 120:
                break
            await asyncio.sleep(0.1)
        elapsed = now() - t0
        await conn.close()
        return peak_running, elapsed

    peak_running, elapsed = asyncio.run(load())
    status = Path(f"/proc/{proc.pid}/status").read_text()
    hwm_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    shutil.rmtree(data, ignore_errors=True)
    return {
        "worker_peak_rss_mb": round(hwm_kb / 1024, 1),
        "peak_jobs_in_flight": peak_running,
        "seconds": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--with-peers", action="store_true", help="also run floor.py and the peers, and print ratios")
    parser.add_argument(
        "--rss", action="store_true", help="also measure the worker's peak RSS with 1,000 jobs in flight"
    )
    parser.add_argument(
        "--latency-only", action="store_true", help="only the pickup latency of ours (RUNS times; for A/B runs)"
    )
    args = parser.parse_args()
    runs = int(os.environ.get("RUNS", 1))
    ours: list[dict[str, Any]] = []
    fair: list[dict[str, Any]] = []
    peers: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    for _ in range(runs):
        ours.append(asyncio.run(bench_ours(args.latency_only)))
        print(json.dumps(ours[-1]), flush=True)
        if args.with_peers:
            fair.append(asyncio.run(bench_fairness()))
            print(json.dumps(fair[-1]), flush=True)
            run_peers_, floor = run_peers()
            for p in run_peers_:
                print(json.dumps(p), flush=True)
            print(json.dumps(floor), flush=True)
            peers += run_peers_
            if floor:
                floors.append(floor)
    if args.latency_only:
        p50s = [o["latency_ms"]["p50"] for o in ours]
        print(json.dumps({"summary": "pickup p50 over runs", "runs": runs, "median_p50_ms": statistics.median(p50s)}))
        return
    if args.with_peers:
        print(json.dumps(summarize(ours, fair, peers, floors)), flush=True)
    if args.rss:
        print(json.dumps(worker_rss()), flush=True)


if __name__ == "__main__":
    main()
