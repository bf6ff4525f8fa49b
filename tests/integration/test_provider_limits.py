"""Per-provider limits hold across every worker on the database: max_concurrent caps calls in flight,
requests_per_minute spaces them, a killed worker's slot is reclaimed when its lease expires, and
providers without limits pay no database round trip."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import asyncpg
import pytest

from imagen_worker.errors import ConfigError
from imagen_worker.jobs import submit_job
from imagen_worker.limits import limits_from_env, list_limits, provider_limiter, set_limit
from imagen_worker.providers import Capabilities, GeneratedImage, GenerationRequest, Provider, ProviderResult
from imagen_worker.providers.local import draw
from imagen_worker.queue import WorkerConfig
from imagen_worker.spec import parse_spec

from ..conftest import IMAGEN
from ..helpers import local_pipeline, running_worker, wait_for_listeners, wait_for_status

if TYPE_CHECKING:
    from imagen_worker.queue import JobContext

pytestmark = pytest.mark.asyncio

OWNER = uuid.UUID("00000000-0000-4000-8000-00000000000a")


class CallRecorder:
    """Every provider call's start and end, and the most calls in flight at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.starts: list[float] = []
        self.callers: set[str] = set()

    def enter(self, caller: str) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.starts.append(time.monotonic())
        self.callers.add(caller)

    def leave(self) -> None:
        self.in_flight -= 1


class SlowProvider(Provider):
    """A provider whose calls take `delay` seconds, recorded by a recorder shared between workers."""

    name = "slow"
    models: ClassVar[dict[str, Capabilities]] = {"slow-v1": Capabilities(default_size="32x32", cancel=True)}

    def __init__(self, recorder: CallRecorder, delay: float) -> None:
        self.recorder = recorder
        self.delay = delay

    async def generate(self, request: GenerationRequest, ctx: JobContext) -> ProviderResult:
        self.recorder.enter(ctx.worker.config.worker_id)
        try:
            await asyncio.sleep(self.delay)
            return ProviderResult(GeneratedImage(draw(request.prompt, 1, 32, 32), seed=1))
        finally:
            self.recorder.leave()


async def submit(conn: asyncpg.Connection, n: int, provider: str = "slow", **spec: object) -> list[uuid.UUID]:
    model = {"slow": "slow-v1", "local": "local-v1"}[provider]
    return [
        await submit_job(
            conn, parse_spec({"prompt": f"job {i}", **spec}), owner_user_id=OWNER, provider=provider, model=model
        )
        for i in range(n)
    ]


def config() -> WorkerConfig:
    return WorkerConfig(concurrency=8, poll_interval=0.5, lease_seconds=5)


def one_slot() -> WorkerConfig:
    """A worker of one slot (each call makes a new config: a config names its worker)."""
    return WorkerConfig(concurrency=1, poll_interval=0.5, lease_seconds=5)


async def test_max_concurrent_set_by_cli_holds_across_two_workers(
    db: asyncpg.Connection, db_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    out = subprocess.run(
        [*IMAGEN, "limits", "set", "slow", "--max-concurrent", "2", "--json"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["max_concurrent"] == 2
    recorder = CallRecorder()
    factories: dict[str, Callable[[], Provider]] = {"slow": lambda: SlowProvider(recorder, 0.25)}
    # Three workers of one slot each: together they could run three calls at once, so only a limit
    # shared through the database keeps it at two; and two calls at once need two of them.
    async with (
        running_worker(db_url, local_pipeline(tmp_path / "a", factories), one_slot()),
        running_worker(db_url, local_pipeline(tmp_path / "b", factories), one_slot()),
        running_worker(db_url, local_pipeline(tmp_path / "c", factories), one_slot()),
    ):
        await wait_for_listeners(db, 3)
        async with db.transaction():
            ids = await submit(db, 12)
        statuses = await wait_for_status(db, ids, timeout=30)
    assert set(statuses.values()) == {"done"}
    assert recorder.max_in_flight == 2, "not max_concurrent calls at once, across the workers"
    assert len(recorder.callers) >= 2
    assert await db.fetchval("select count(*) from imagen.provider_slots") == 0


# Every slot a provider call is granted, stamped with the database's clock at the grant (acquired_at).
RECORD_GRANTS = """
create table public.test_grants (job_id uuid not null, worker_id text not null, at timestamptz not null);
create function public.record_grant() returns trigger language plpgsql as $$
begin
  insert into public.test_grants values (new.job_id, new.worker_id, new.acquired_at);
  return new;
end $$;
create trigger record_grant after insert or update on imagen.provider_slots
  for each row execute function public.record_grant();
"""


async def test_requests_per_minute_spaces_calls_across_workers(
    db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    # One call every 0.5 s, burst 1. The max_concurrent above the five jobs never binds: it makes each
    # grant leave a provider_slots row, so the spacing is measured where the limiter decides it, at the
    # database, not after each grant's trip back to a worker. Each worker has one slot and a call takes
    # 0.8 s, longer than the spacing: the worker holding the last grant is busy at the next token, so
    # the two workers share the calls by construction.
    await set_limit(db, "slow", requests_per_minute=120, max_concurrent=5)
    await db.execute(RECORD_GRANTS)
    recorder = CallRecorder()
    factories: dict[str, Callable[[], Provider]] = {"slow": lambda: SlowProvider(recorder, 0.8)}
    async with (
        running_worker(db_url, local_pipeline(tmp_path / "a", factories), one_slot()),
        running_worker(db_url, local_pipeline(tmp_path / "b", factories), one_slot()),
    ):
        await wait_for_listeners(db, 2)
        ids = await submit(db, 5)
        await wait_for_status(db, ids, timeout=30)
    grants = await db.fetch("select job_id, worker_id, at from public.test_grants order by at")
    assert sorted(r["job_id"] for r in grants) == sorted(ids), "one grant per call"
    assert len(recorder.starts) == 5
    assert len({r["worker_id"] for r in grants}) == 2, "both workers' calls were spaced by one bucket"
    gaps = [(b["at"] - a["at"]).total_seconds() for a, b in itertools.pairwise(grants)]
    assert min(gaps) >= 0.5 - 1e-6, f"calls granted closer than the rate allows: {gaps}"  # whole microseconds


DEAD_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from imagen_worker.pipeline import ImagePipeline
    from imagen_worker.queue import Worker, WorkerConfig
    from imagen_worker.storage import LocalStorage

    async def main():
        storage = LocalStorage(Path(sys.argv[2]), signing_key=b"test-signing-key-0123456789")
        config = WorkerConfig(concurrency=1, poll_interval=0.5, lease_seconds=2, worker_id="doomed-worker")
        await Worker(sys.argv[1], ImagePipeline(storage), config).run()

    asyncio.run(main())
    """
)


async def test_slot_of_a_sigkilled_worker_is_reclaimed_when_its_lease_expires(
    db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    await set_limit(db, "local", max_concurrent=1)
    stuck = await submit_job(
        db,
        parse_spec({"prompt": "a very slow picture", "options": {"delay_s": 60}}),
        owner_user_id=OWNER,
        max_attempts=1,
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", DEAD_WORKER, db_url, str(tmp_path / "dead")],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not await db.fetchval("select count(*) from imagen.provider_slots where job_id = $1", stuck):
            assert time.monotonic() < deadline, "the doomed worker never took its slot"
            assert proc.poll() is None, "the doomed worker exited"
            await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    lease_end = await db.fetchval("select lease_expires_at from imagen.jobs where id = $1", stuck)

    async with running_worker(db_url, local_pipeline(tmp_path / "live"), config()):
        ids = await submit(db, 2, provider="local")
        statuses = await wait_for_status(db, [*ids, stuck], timeout=30)
    assert statuses[stuck] == "failed", "the dead worker's job is reaped (its one attempt spent)"
    assert [statuses[i] for i in ids] == ["done", "done"]
    finished = await db.fetch("select completed_at from imagen.jobs where id = any($1::uuid[])", ids)
    assert all(r["completed_at"] >= lease_end for r in finished), "a call ran while the dead worker's slot was alive"
    assert await db.fetchval("select count(*) from imagen.provider_slots") == 0


class BarrierProvider(SlowProvider):
    """A provider whose calls each wait until `n` calls are in flight at once (failing after 20 s)."""

    def __init__(self, recorder: CallRecorder, n: int) -> None:
        super().__init__(recorder, 0.0)
        self.n = n

    async def generate(self, request: GenerationRequest, ctx: JobContext) -> ProviderResult:
        self.recorder.enter(ctx.worker.config.worker_id)
        try:
            deadline = time.monotonic() + 20
            while self.recorder.max_in_flight < self.n:
                assert time.monotonic() < deadline, f"never {self.n} calls at once: the calls were throttled"
                await asyncio.sleep(0.01)
            return ProviderResult(GeneratedImage(draw(request.prompt, 1, 32, 32), seed=1))
        finally:
            self.recorder.leave()


async def test_providers_without_limits_run_unthrottled_with_no_database_round_trip(
    db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    await set_limit(db, "other", max_concurrent=1, requests_per_minute=1)
    recorder = CallRecorder()
    # Each call waits until all eight are in flight: throttled calls would never get there.
    pipeline = local_pipeline(tmp_path, {"slow": lambda: BarrierProvider(recorder, 8)})
    async with running_worker(db_url, pipeline, config()) as worker:
        async with db.transaction():
            ids = await submit(db, 8)
        statuses = await wait_for_status(db, ids, timeout=30)
        stats = dict(provider_limiter(worker).stats)
    assert set(statuses.values()) == {"done"}
    assert recorder.max_in_flight == 8
    assert stats["acquires"] == 0, "an unlimited provider's call asked the database for a slot"
    assert stats["refreshes"] == 1, "the limits cache was reloaded inside its refresh period"


async def test_limits_from_env_are_written_to_the_database_and_enforced(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEN_PROVIDER_LIMITS", json.dumps({"slow": {"max_concurrent": 1, "rpm": 6000}}))
    recorder = CallRecorder()
    pipeline = local_pipeline(tmp_path, {"slow": lambda: SlowProvider(recorder, 0.1)})
    async with running_worker(db_url, pipeline, config()):
        ids = await submit(db, 4)
        await wait_for_status(db, ids, timeout=30)
    assert recorder.max_in_flight == 1
    [row] = await list_limits(db)
    assert (row["provider"], row["max_concurrent"], row["requests_per_minute"]) == ("slow", 1, 6000.0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "IMAGEN_PROVIDER_LIMITS is not valid JSON"),
        ('["openai"]', "must be a JSON object"),
        ('{"OpenAI": {"max_concurrent": 1}}', "'OpenAI' is not a provider name"),
        ('{"openai": {"max_concurrent": 0}}', "max_concurrent must be a whole number of at least 1"),
        ('{"openai": {"rpm": -5}}', "requests_per_minute must be a number above 0"),
        ('{"openai": {"max_inflight": 2}}', "unknown key(s) max_inflight"),
    ],
)
async def test_malformed_env_limits_raise_an_error_naming_the_problem(raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        limits_from_env({"IMAGEN_PROVIDER_LIMITS": raw})
    assert message in str(err.value)
