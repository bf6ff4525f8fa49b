"""The queue runtime: wake on NOTIFY or poll, claim with SKIP LOCKED, lease, heartbeat, reap, retry,
cancel and shut down gracefully, running any async handler."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg

from .errors import DatabaseError, JobError, JobTimeout, RetryableJobError
from .jobs import Job
from .queries import q, queries
from .redact import caller_message

log = logging.getLogger("imagen.worker")

# Claims in flight at once: two let one claim's round trip overlap another's, and both with the
# completions, so Postgres can use more than one core for a single worker.
MAX_CLAIMS_IN_FLIGHT = 2
# The worker's sessions plan for a queue. Without fresh statistics (a bulk insert that autovacuum
# has not analyzed yet) the planner turns the claim into a bitmap scan of the whole backlog plus a
# sort, so every claim costs O(backlog); with bitmap scans off it walks jobs_pending_idx in order
# and stops after n rows. Measured: 3.1k -> 4.8k jobs/s on an unanalyzed 5,000-job backlog.
# The queue's statements are prepared once per connection and run thousands of times; a generic
# plan (no re-planning per execution) suits them, since every one is a key or partial-index lookup.
QUEUE_SESSION_SETTINGS = {"enable_bitmapscan": "off", "plan_cache_mode": "force_generic_plan"}
# Event kinds announced on imagen_job_signals besides cancellations (migration 0006).
SIGNALLED_EVENT_KINDS = ("webhook",)
# Finished jobs written per statement, and how long the flusher leaves them for a claim to carry.
MAX_COMPLETIONS = 500
FLUSH_DEFER_SECONDS = 0.05
# How often the worker asks whether any provider has limits: while one has, claims go through
# imagen.claim_within_limits (ADR 0007), so a limit set with `imagen limits set` shapes claims within this.
LIMITS_CHECK_SECONDS = 5.0
# claim_next's bound on priority when any job may be claimed (jobs.priority is a smallint).
ANY_PRIORITY = 32767

# What a lost or restarting database raises; the runtime waits and reconnects on these.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    # "cannot switch to state …; another operation is in progress": a connection a restart left in the
    # middle of a protocol exchange. The statement did not run; like a lost connection, retry it.
    asyncpg.InternalClientError,
)


@dataclass(frozen=True)
class ImageRecord:
    """An `imagen.images` row the handler produced; inserted with the job's `done` flip."""

    bucket: str
    path: str
    content_type: str
    width: int
    height: int
    bytes: int
    sha256: str
    thumb_path: str | None = None
    provider: str | None = None
    model: str | None = None
    seed: int | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True)
class JobResult:
    image: ImageRecord | None = None
    cost_usd: Decimal | None = None


Handler = Callable[["JobContext"], Awaitable[JobResult | None]]


@dataclass
class WorkerConfig:
    concurrency: int = 8
    poll_interval: float = 5.0
    lease_seconds: float = 30.0
    job_timeout: float = 300.0
    shutdown_grace: float = 30.0
    scope: str = "all"
    owner_user_id: uuid.UUID | None = None
    poll_only: bool = False
    # Jobs claimed ahead of a free slot, waiting in this worker (leased). 0 suits a shared pool of
    # slow jobs (nothing is hoarded); a few help a worker of many short jobs keep its slots full.
    prefetch: int = 0
    retry_base_seconds: float = 2.0
    retry_cap_seconds: float = 300.0
    reconnect_cap_seconds: float = 1.0
    # The live-worker registry (imagen.workers): the worker beats every third of this; a worker
    # silent for longer is no longer live (a crash ages out).
    stale_seconds: float = 30.0
    # The providers this worker runs jobs of, as registered; None asks the handler
    # (`available_providers()`, as ImagePipeline has), else none are named.
    providers: tuple[str, ...] | None = None
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")

    def __post_init__(self) -> None:
        if self.scope not in ("all", "owner"):
            raise ValueError(f"scope {self.scope!r} must be 'all' or 'owner'")
        if self.scope == "owner" and self.owner_user_id is None:
            raise ValueError("scope 'owner' needs owner_user_id (the user whose jobs this worker runs)")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.prefetch < 0:
            raise ValueError("prefetch must be 0 or more")
        if self.stale_seconds < 1:
            raise ValueError("stale_seconds must be at least 1")


class JobContext:
    """What a handler gets: the job, a way to report progress and events, and the worker's pool."""

    def __init__(self, worker: Worker, job: Job) -> None:
        self.worker = worker
        self.job = job
        self.started = time.perf_counter()
        # When the worker's per-job timeout fires (time.monotonic()).
        self.deadline = time.monotonic() + worker.config.job_timeout

    @property
    def pool(self) -> asyncpg.Pool:
        return self.worker.pool

    def time_left(self) -> float:
        """Seconds until this job's timeout fails it."""
        return self.deadline - time.monotonic()

    @property
    def stop_reason(self) -> str:
        """Why the handler is being stopped, for a provider's cancel hook: "cancelled" (the owner
        cancelled the job), "lease_lost" (the job was taken back: an expired lease), "timed_out", or
        "shutdown" (the worker is stopping and the job returns to the queue to be resumed)."""
        running = self.worker._running.get(self.job.id)
        if running is not None and running.cancelled_by_owner:
            return "cancelled"
        if running is not None and running.lease_lost:
            return "lease_lost"
        if self.time_left() <= 0.05:
            return "timed_out"
        return "shutdown"

    async def event(self, kind: str, payload: dict[str, Any], *, delivery_id: str | None = None) -> int | None:
        """Append a job_events row (kind: progress, log, error, webhook). None if the delivery id was seen."""
        value = await self.pool.fetchval(q("insert_event"), self.job.id, kind, payload, delivery_id)
        return int(value) if value is not None else None

    async def progress(self, fraction: float, message: str | None = None) -> None:
        payload: dict[str, Any] = {"progress": round(max(0.0, min(1.0, fraction)), 4)}
        if message:
            payload["message"] = message[:500]
        await self.event("progress", payload)

    async def wait_for_event(self, kind: str, timeout: float) -> bool:  # noqa: ASYNC109 - False on timeout is the answer
        """Wait until a `kind` event for this job is signalled; False on timeout. Signalled kinds:
        "webhook" (a verified delivery, announced on imagen_job_signals).

        Callers read the event rows themselves (by id or kind) after a wake-up, and should still poll the
        provider on timeout: a notification can be missed while the LISTEN connection reconnects.
        """
        if kind not in SIGNALLED_EVENT_KINDS:
            raise ValueError(
                f"wait_for_event kind {kind!r} is never signalled to workers; use one of {SIGNALLED_EVENT_KINDS}"
            )
        waiter = self.worker._event_waiter(self.job.id, kind)
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiter.clear()

    async def set_provider_job_id(self, provider_job_id: str) -> None:
        await self.pool.execute(q("set_provider_job_id"), self.worker.config.worker_id, self.job.id, provider_job_id)


@dataclass
class _Running:
    job: Job
    task: asyncio.Task[None]
    claimed_at: float
    cancelled_by_owner: bool = False
    lease_lost: bool = False


def backoff_seconds(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter for the attempt just made; a provider's Retry-After wins if larger."""
    delay = min(cap, base * (2.0 ** max(attempt - 1, 0))) * random.uniform(0.75, 1.25)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return round(delay, 3)


class Worker:
    """Runs `handler` for jobs of `imagen.jobs` until stopped."""

    def __init__(self, dsn: str, handler: Handler, config: WorkerConfig | None = None) -> None:
        self.dsn = dsn
        self.handler = handler
        self.config = config or WorkerConfig()
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._listener_lost = asyncio.Event()
        # The dispatcher sleeps on _kick; NOTIFY, the poll timer, a freed slot and a finished claim set it.
        # _due_gen counts "there may be new work" signals (NOTIFY, poll); the queue is known empty
        # while _empty_gen equals it, i.e. a claim came back short with no signal since it started.
        self._kick = asyncio.Event()
        self._due_gen = 0
        self._empty_gen = -1
        self._ahead_gen = -1
        self._idle_until: tuple[int, float] | None = None
        self._reserved = 0
        self._claims: set[asyncio.Task[None]] = set()
        self._capacity = self.config.concurrency + self.config.prefetch
        self._claim_batch = max(1, -(-self._capacity // MAX_CLAIMS_IN_FLIGHT))
        self._stopping = asyncio.Event()
        self._running: dict[uuid.UUID, _Running] = {}
        self._ready: dict[uuid.UUID, Job] = {}  # prefetched: claimed, waiting for a slot (started by priority)
        self._completions: list[tuple[Job, JobResult]] = []
        self._flush_wanted = asyncio.Event()
        self._flush_idle = asyncio.Event()
        self._flush_idle.set()
        # Jobs whose handler finished but whose `done` is not yet written: their leases still count.
        self._awaiting_flush: dict[uuid.UUID, Job] = {}
        self._background: list[asyncio.Task[None]] = []
        self._event_waiters: dict[tuple[uuid.UUID, str], asyncio.Event] = {}
        self._owner = self.config.owner_user_id if self.config.scope == "owner" else None
        # Provider limits (ADR 0007): whether any provider has some (asked every LIMITS_CHECK_SECONDS),
        # the limited providers the last claim could not start, and when the first gets a token.
        self._limits_active = False
        self._limits_checked: float | None = None
        self._limits_lock = asyncio.Lock()
        self._blocked: list[str] = []
        self._blocked_until: float | None = None
        self.stats = {"claimed": 0, "done": 0, "failed": 0, "retried": 0, "cancelled": 0, "released": 0}

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseError("the worker is not started")
        return self._pool

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def stop(self) -> None:
        """Ask the worker to stop claiming and shut down gracefully."""
        self._stopping.set()
        self._kick.set()

    def _due(self) -> None:
        """There may be new work: a NOTIFY, the poll timer, a reconnect."""
        self._due_gen += 1
        self._kick.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop gracefully; a second signal exits at once (leases cover what is left)."""
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if self._stopping.is_set():
                log.warning("second signal %s: exiting now; unfinished jobs return when their leases expire", signum)
                os._exit(1)
            log.info("signal %s: stopping (grace %.0f s)", signum, self.config.shutdown_grace)
            self.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)

    async def run(self) -> None:
        """Run until `stop()` (or a signal), then drain, release and close."""
        from .db import init_connection

        size = min(self.config.concurrency, 8) + 2
        self._pool = await self._retrying(
            lambda: asyncpg.create_pool(
                self.dsn,
                min_size=2,
                max_size=size,
                init=init_connection,
                reset=_keep_session,
                server_settings=QUEUE_SESSION_SETTINGS,
            ),
            "connect",
        )
        log.info(
            "worker %s started: concurrency=%d poll=%.1fs lease=%.0fs scope=%s%s",
            self.config.worker_id,
            self.config.concurrency,
            self.config.poll_interval,
            self.config.lease_seconds,
            self.config.scope,
            " poll-only" if self.config.poll_only else "",
        )
        self._background = [
            asyncio.create_task(self._flush_loop(), name="imagen-flush"),
            asyncio.create_task(self._heartbeat_loop(), name="imagen-heartbeat"),
            asyncio.create_task(self._maintenance_loop(), name="imagen-maintenance"),
            asyncio.create_task(self._registry_loop(), name="imagen-registry"),
        ]
        if not self.config.poll_only:
            self._background.append(asyncio.create_task(self._listen_loop(), name="imagen-listen"))
        try:
            await self._dispatch_loop()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        grace = self.config.shutdown_grace
        if self._claims:
            await asyncio.wait(list(self._claims), timeout=10)
        unstarted = list(self._ready)
        self._ready.clear()
        if self._running:
            log.info("waiting up to %.0f s for %d in-flight jobs", grace, len(self._running))
            tasks = [r.task for r in self._running.values()]
            await asyncio.wait(tasks, timeout=grace)
        leftover = list(self._running.values())
        for r in leftover:
            r.task.cancel()
        if leftover:
            await asyncio.wait([r.task for r in leftover], timeout=5)
        await self._flush_all()
        if leftover or unstarted:
            ids = [r.job.id for r in leftover] + unstarted
            with contextlib.suppress(*CONNECTION_ERRORS):
                released = await self.pool.fetch(q("release_jobs"), self.config.worker_id, ids)
                self.stats["released"] += len(released)
                log.info("released %d unfinished jobs to the queue", len(released))
        for t in self._background:
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        with contextlib.suppress(*CONNECTION_ERRORS):
            await self.pool.execute(_workers_q("deregister_worker"), self.config.worker_id)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
        if self._pool is not None:
            await self._pool.close()
        closer = getattr(self.handler, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()
        log.info("worker %s stopped: %s", self.config.worker_id, json.dumps(self.stats))

    # -- wake-up -------------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        """Keep one connection LISTENing; after a loss, reconnect with backoff and sweep at once."""
        while not self._stopping.is_set():
            self._listener_lost.clear()
            conn = await self._retrying(lambda: asyncpg.connect(self.dsn), "listen")
            self._listener = conn
            conn.add_termination_listener(lambda _c: self._listener_lost.set())
            try:
                await conn.add_listener("imagen_jobs", self._on_job_notify)
                await conn.add_listener("imagen_job_signals", self._on_signal)
            except CONNECTION_ERRORS:
                continue
            self._due()  # sweep whatever arrived while we were not listening
            await self._listener_lost.wait()
            log.warning("lost the LISTEN connection; reconnecting")
            if self._pool is not None:
                await self._pool.expire_connections()
            with contextlib.suppress(Exception):
                conn.terminate()

    def _on_job_notify(self, *_args: object) -> None:
        self._due()
        if not self._claims and not self._stopping.is_set():
            # Nothing in flight: claim from here rather than on the dispatcher's next turn of the
            # loop, one wake-up fewer between the NOTIFY and the job's start (ADR 0005).
            free = self._free_slots()
            if free >= 1:
                self._start_claim(min(free, self._claim_batch))

    def _on_signal(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        # imagen_job_signals (migration 0006): a JSON array of events a job's worker must act on,
        # a running job's cancellation or a webhook delivery. Cheap filter first: most concern
        # jobs of other workers.
        if '"cancelled"' not in payload and not self._event_waiters:
            return
        try:
            events = json.loads(payload)
        except ValueError:
            return
        for event in events if isinstance(events, list) else [events]:
            try:
                job_id = uuid.UUID(event["job_id"])
            except (ValueError, KeyError, TypeError):
                continue
            if event.get("status") == "cancelled":
                self._abort(job_id, by_owner=True)
            waiter = self._event_waiters.get((job_id, str(event.get("kind"))))
            if waiter is not None:
                waiter.set()

    def _event_waiter(self, job_id: uuid.UUID, kind: str) -> asyncio.Event:
        return self._event_waiters.setdefault((job_id, kind), asyncio.Event())

    def _abort(self, job_id: uuid.UUID, *, by_owner: bool) -> None:
        if self._ready.pop(job_id, None) is not None:
            self.stats["cancelled" if by_owner else "released"] += 1
            log.info("job=%s event=%s before it started", job_id, "cancelled" if by_owner else "lease_lost")
            self._kick.set()
            return
        running = self._running.get(job_id)
        if running is None or running.task.done():
            return
        if by_owner:
            running.cancelled_by_owner = True
        else:
            running.lease_lost = True
        running.task.cancel()

    # -- claiming ------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        """Keep the slots full: up to MAX_CLAIMS_IN_FLIGHT claims at once, each for a share of the free
        slots, so claiming overlaps with running and completing; sleep when the queue is empty."""
        while not self._stopping.is_set():
            self._kick.clear()
            free = self._free_slots()
            empty = self._empty_gen == self._due_gen
            # With a claim already in flight, another is worth its round trip only for a full share
            # of the slots; otherwise slots freed one by one would each cost a claim statement.
            wanted = 1 if not self._claims else self._claim_batch
            if not empty and free >= wanted and len(self._claims) < MAX_CLAIMS_IN_FLIGHT:
                self._start_claim(min(free, self._claim_batch))
                continue
            if not empty and free <= 0 and self._ready and not self._claims and self._ahead_gen != self._due_gen:
                # Full, with jobs claimed ahead: new work may be more urgent than all of them (a click
                # during a sweep). Claim one such job now, past the prefetch bound, so it starts at the
                # next free slot instead of queueing behind jobs claimed before it (ADR 0007).
                self._ahead_gen = self._due_gen
                if not self._limits_active:
                    self._start_claim(1, ahead_of=min(j.priority for j in self._ready.values()) - 1)
                    continue
            timeout = None
            if empty and not self._claims:
                timeout = await self._idle_timeout()
            try:
                await asyncio.wait_for(self._kick.wait(), timeout)
            except TimeoutError:
                self._due()  # the safety poll, or a scheduled job's run_at

    def _free_slots(self) -> int:
        """Jobs this worker may still claim: its capacity less those running, waiting, being claimed."""
        return self._capacity - len(self._running) - len(self._ready) - self._reserved

    def _start_claim(self, n: int, ahead_of: int | None = None) -> None:
        self._reserved += n
        self._claims.add(asyncio.create_task(self._claim(n, self._due_gen, ahead_of)))

    async def _claim(self, n: int, gen: int, ahead_of: int | None = None) -> None:
        """Claim up to n jobs (only of a priority up to `ahead_of`, when given) and start or keep them."""
        try:
            try:
                rows = await self._cycle(n) if ahead_of is None else await self._claim_next(n, ahead_of)
            except CONNECTION_ERRORS as exc:
                log.warning("claim failed (%s); retrying", type(exc).__name__)
                self._empty_gen = gen
                self._idle_until = (gen, time.monotonic() + self.config.reconnect_cap_seconds)
                return
            finally:
                # Leave the in-flight set before the dispatcher next looks (a done-callback would run after it).
                self._claims.discard(asyncio.current_task())
                self._reserved -= n
            for row in rows:
                job = Job.from_record(row)
                if job.id in self._running or job.id in self._ready or job.id in self._awaiting_flush:
                    # This worker already holds the job: its claim was lost (a Postgres crash undid
                    # an asynchronous claim, ADR 0005) and it came back to us. The handler at work
                    # (or its finished result) stands for the new claim; running it twice would not.
                    log.info("job=%s event=reclaimed: already running here; the handler at work goes on", job.id)
                    continue
                if len(self._running) < self.config.concurrency:
                    self._start(job)
                else:
                    self._ready[job.id] = job
            self.stats["claimed"] += len(rows)
            if len(rows) < n and gen == self._due_gen and ahead_of is None:
                self._empty_gen = gen
        finally:
            # Wake the dispatcher last: the handlers just started run their first steps ahead of its
            # bookkeeping (and of an idle spell's next_run_at query).
            self._kick.set()

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._run_job(job), name=f"imagen-job-{job.id}")
        self._running[job.id] = _Running(job, task, time.perf_counter())

    async def _cycle(self, n: int) -> list[asyncpg.Record]:
        """One statement: write the finished jobs waiting to be written and claim up to n
        (claim_jobs, committed synchronously), or, with none to write, claim alone (claim_next).
        While a provider has limits, the finished jobs are written first and the claim is
        claim_within_limits. On a connection error the finished jobs go back to wait for the next cycle."""
        if n > 0 and await self._limited():
            if self._completions:
                await self._write(0)
            return await self._claim_within_limits(n)
        return await self._write(n)

    async def _claim_next(self, n: int, up_to_priority: int = ANY_PRIORITY) -> list[asyncpg.Record]:
        """The lean claim (claim_next, ADR 0005) of up to n jobs of a priority up to `up_to_priority`."""
        return await self.pool.fetch(
            q("claim_next"), self.config.worker_id, n, self.config.lease_seconds, self._owner, up_to_priority
        )

    async def _limited(self) -> bool:
        """Whether any provider has limits, from a cache refreshed every LIMITS_CHECK_SECONDS. A login that
        cannot see imagen.provider_limits (a user's own worker, ADR 0008) is bound by none."""
        if self._limits_stale():
            async with self._limits_lock:  # two claims in flight ask once, and both get the answer
                if self._limits_stale():
                    try:
                        self._limits_active = bool(await self.pool.fetchval(q("limits_exist")))
                    except asyncpg.InsufficientPrivilegeError:
                        self._limits_active = False
                    self._limits_checked = time.monotonic()
                    if not self._limits_active:
                        self._blocked, self._blocked_until = [], None
        return self._limits_active

    def _limits_stale(self) -> bool:
        return self._limits_checked is None or time.monotonic() - self._limits_checked >= LIMITS_CHECK_SECONDS

    async def _claim_within_limits(self, n: int) -> list[asyncpg.Record]:
        rows = await self.pool.fetch(
            q("claim_within_limits"), self.config.worker_id, n, self.config.lease_seconds, self._owner
        )
        meta = rows[-1]
        self._blocked = list(meta["blocked"] or [])
        next_at = meta["next_at"]
        self._blocked_until = (
            None if next_at is None else time.monotonic() + max(0.0, next_at.timestamp() - time.time())
        )
        return [r for r in rows if r["claimed"]]

    async def _write(self, n: int) -> list[asyncpg.Record]:
        batch, self._completions = self._completions[:MAX_COMPLETIONS], self._completions[MAX_COMPLETIONS:]
        if not batch:
            # Nothing to carry (an idle worker woken by a NOTIFY, or a drain that outruns its
            # handlers): the lean statement, committed asynchronously (ADR 0005).
            return await self._claim_next(n)
        ids = [job.id for job, _ in batch]
        costs = [res.cost_usd for _, res in batch]
        image_ids = [res.image.id if res.image else None for _, res in batch]
        images = [_image_row(job, res.image) for job, res in batch if res.image is not None]
        try:
            rows = await self.pool.fetch(
                q("claim_jobs"),
                self.config.worker_id,
                n,
                self.config.lease_seconds,
                self._owner,
                ids,
                costs,
                image_ids,
                images,
            )
        except asyncpg.PostgresError as exc:
            if isinstance(exc, CONNECTION_ERRORS):
                self._completions[:0] = batch
                raise
            # A result the database refuses (a constraint, a bug) must not block every later claim:
            # fail those jobs with the reason, and go on.
            await self._refuse_results(batch, exc)
            return []
        except BaseException:
            self._completions[:0] = batch
            raise
        claimed = [r for r in rows if r["claimed"]]
        written = {r["id"] for r in rows if not r["claimed"]}
        # A finished job this statement could not write because it was pending again (its claim lost
        # to a crash) and that it claimed back: still ours, so its result goes with the next cycle.
        again = {r["id"] for r in claimed} - written
        # One this statement neither wrote nor claimed back (a flush, which claims nothing, or a job not
        # yet due) is taken back by id when it is merely pending again; otherwise it was cancelled or
        # another worker holds it, and its result is dropped.
        unwritten = [job.id for job, _ in batch if job.id not in written and job.id not in again]
        if unwritten:
            again |= {
                r["id"]
                for r in await self.pool.fetch(
                    q("retake_jobs"), self.config.worker_id, unwritten, self.config.lease_seconds
                )
            }
        kept = [(job, res) for job, res in batch if job.id in again]
        if kept:
            self._completions.extend(kept)
            self._flush_wanted.set()
            batch = [(job, res) for job, res in batch if job.id not in again]
        self._record_done(batch, written)
        return claimed

    async def _idle_timeout(self) -> float:
        """Seconds until the next pending job is due, or the poll interval, whichever is sooner
        (asked of the database once per idle spell)."""
        gen = self._due_gen
        if self._idle_until is None or self._idle_until[0] != gen:
            try:
                # Jobs of providers the last claim found without capacity do not count: they wait for
                # a token (blocked_until) or a freed slot (announced on imagen_jobs), not for run_at.
                due = await self.pool.fetchval(q("next_run_at"), self._owner, self._blocked)
            except CONNECTION_ERRORS:
                due = None
                wait = self.config.reconnect_cap_seconds
            else:
                wait = self.config.poll_interval
                if due is not None:
                    wait = min(wait, max(0.01, float(due.timestamp()) - time.time()))
                if self._blocked_until is not None:
                    wait = min(wait, max(0.01, self._blocked_until - time.monotonic()))
            self._idle_until = (gen, time.monotonic() + wait)
        return max(0.0, self._idle_until[1] - time.monotonic())

    # -- running one job -----------------------------------------------------------------------

    async def _run_job(self, job: Job) -> None:
        ctx = JobContext(self, job)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "job=%s event=running attempt=%d/%d provider=%s", job.id, job.attempts, job.max_attempts, job.provider
            )
        try:
            async with asyncio.timeout(self.config.job_timeout):
                result = await self.handler(ctx)
        except asyncio.CancelledError:
            running = self._running.get(job.id)
            if running is not None and running.cancelled_by_owner:
                self.stats["cancelled"] += 1
                log.info("job=%s event=cancelled after_ms=%.0f", job.id, (time.perf_counter() - ctx.started) * 1000)
            elif running is not None and running.lease_lost:
                log.warning("job=%s event=lease_lost: another worker or a cancel took it; handler stopped", job.id)
            self._release_slot(job.id)
            if running is None or not (running.cancelled_by_owner or running.lease_lost):
                raise
            return
        except TimeoutError:
            await self._fail(ctx, JobTimeout(f"timed out after {self.config.job_timeout:g} s"))
        except Exception as exc:
            await self._fail(ctx, exc)
        else:
            self._completions.append((job, result or JobResult()))
            self._flush_wanted.set()
            self._release_slot(job.id, keep_lease=True)
            return
        self._release_slot(job.id)

    def _release_slot(self, job_id: uuid.UUID, *, keep_lease: bool = False) -> None:
        running = self._running.pop(job_id, None)
        if self._event_waiters:
            for key in [k for k in self._event_waiters if k[0] == job_id]:
                del self._event_waiters[key]
        if keep_lease and running is not None:
            self._awaiting_flush[job_id] = running.job
        if self._ready and not self._stopping.is_set():
            # The first in claim order: a job claimed later may come before jobs claimed ahead of it.
            first = min(self._ready.values(), key=lambda j: (j.priority, j.vtime, j.run_at))
            self._start(self._ready.pop(first.id))
        self._kick.set()

    async def _fail(self, ctx: JobContext, exc: BaseException) -> None:
        job = ctx.job
        retryable = isinstance(exc, RetryableJobError) or (
            isinstance(exc, CONNECTION_ERRORS) and not isinstance(exc, JobError)
        )
        retry_after = exc.retry_after if isinstance(exc, JobError) else None
        message = caller_message(exc)
        delay = backoff_seconds(
            job.attempts, self.config.retry_base_seconds, self.config.retry_cap_seconds, retry_after
        )
        try:
            row = await self._retrying(
                lambda: self.pool.fetchrow(q("fail_job"), self.config.worker_id, job.id, message, retryable, delay),
                "fail",
                attempts=5,
            )
        except Exception as write_error:
            # Whatever the write raised, the caller must still free the slot (a job left in _running
            # would have its lease renewed forever); the expired lease returns the job to the queue.
            log.error(
                "job=%s could not record its failure (%s); its lease will return it", job.id, type(write_error).__name__
            )
            return
        if row is None:
            return  # cancelled or reaped meanwhile
        if row["status"] == "pending":
            self.stats["retried"] += 1
            log.info(
                "job=%s event=retry in_s=%.1f attempt=%d/%d error=%r",
                job.id,
                delay,
                row["attempts"],
                row["max_attempts"],
                message,
            )
        else:
            self.stats["failed"] += 1
            log.info(
                "job=%s event=failed attempt=%d/%d error=%r", job.id, row["attempts"], row["max_attempts"], message
            )
        if not isinstance(exc, JobError):
            log.debug("job=%s handler raised", job.id, exc_info=exc)

    # -- completing ----------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        """Write finished jobs no claim is about to carry: when the queue is empty, or after
        FLUSH_DEFER_SECONDS, whatever accumulated (claim_jobs with n = 0)."""
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            self._flush_idle.clear()
            try:
                if self._empty_gen != self._due_gen and not self._stopping.is_set():
                    await asyncio.sleep(FLUSH_DEFER_SECONDS)  # a claim will most likely carry them
                while self._completions:
                    await self._retrying(functools.partial(self._cycle, 0), "complete")
            finally:
                self._flush_idle.set()

    async def _flush_all(self, within: float = 10.0) -> None:
        """Let the flusher write what is left; under a database outage give up after `within` s (leases cover it)."""
        if not self._completions and self._flush_idle.is_set():
            return
        self._flush_idle.clear()
        self._flush_wanted.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._flush_idle.wait(), within)

    async def _refuse_results(self, batch: list[tuple[Job, JobResult]], exc: asyncpg.PostgresError) -> None:
        message = f"the database refused the job's result: {caller_message(exc)}"
        log.error("could not write %d finished jobs (%s); failing them", len(batch), exc)
        for job, _ in batch:
            self._awaiting_flush.pop(job.id, None)
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self.pool.fetchrow(q("fail_job"), self.config.worker_id, job.id, message[:1000], False, 0.0)
            self.stats["failed"] += 1

    def _record_done(self, batch: list[tuple[Job, JobResult]], written: set[uuid.UUID]) -> None:
        self.stats["done"] += len(written)
        for job, _ in batch:
            self._awaiting_flush.pop(job.id, None)
        if log.isEnabledFor(logging.INFO):
            now = time.time()
            for job, res in batch:
                if job.id in written:
                    log.info(
                        "job=%s event=done total_ms=%.0f image=%s",
                        job.id,
                        (now - job.created_at.timestamp()) * 1000,
                        res.image.id if res.image else None,
                    )
                else:
                    log.info("job=%s event=discarded: no longer held by this worker (cancelled or reaped)", job.id)

    # -- leases --------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = max(0.2, self.config.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            ids = list(self._running) + list(self._ready) + list(self._awaiting_flush)
            if not ids:
                continue
            try:
                kept = {
                    r["id"]
                    for r in await self.pool.fetch(
                        q("renew_leases"), self.config.worker_id, ids, self.config.lease_seconds
                    )
                }
            except CONNECTION_ERRORS as exc:
                log.warning("heartbeat failed (%s)", type(exc).__name__)
                continue
            lost = [job_id for job_id in ids if job_id not in kept]
            if lost:
                try:
                    kept |= {
                        r["id"]
                        for r in await self.pool.fetch(
                            q("retake_jobs"), self.config.worker_id, lost, self.config.lease_seconds
                        )
                    }
                except CONNECTION_ERRORS as exc:
                    log.warning("heartbeat could not retake %d jobs (%s)", len(lost), type(exc).__name__)
                    continue
            for job_id in lost:
                if job_id in kept:
                    log.warning("job=%s event=retaken: pending again while its handler ran here; kept", job_id)
                elif job_id in self._running or job_id in self._ready:
                    self._abort(job_id, by_owner=False)

    def _registry_row(self) -> tuple[Any, ...]:
        providers = self.config.providers
        if providers is None:
            available = getattr(self.handler, "available_providers", None)
            providers = tuple(available()) if available is not None else ()
        return (
            self.config.worker_id,
            socket.gethostname(),
            os.getpid(),
            self.config.scope,
            self._owner,
            list(providers),
            self.config.concurrency,
        )

    async def _registry_loop(self) -> None:
        """Register in imagen.workers, beat every third of stale_seconds, and prune rows of workers
        that crashed long ago; shutdown deregisters."""
        row = self._registry_row()
        interval = self.config.stale_seconds / 3
        statement = _workers_q("register_worker")
        beats = 0
        while True:
            try:
                await self.pool.execute(statement, *row)
                statement = _workers_q("beat_worker")
                if beats % 100 == 0:
                    await self.pool.execute(_workers_q("prune_workers"), max(3600.0, 10 * self.config.stale_seconds))
                beats += 1
            except CONNECTION_ERRORS as exc:
                log.warning("registry beat failed (%s)", type(exc).__name__)
            await asyncio.sleep(interval)

    async def _maintenance_loop(self) -> None:
        """Reap expired leases (any worker's) at start and every poll interval; in poll-only mode, also wake."""
        while True:
            try:
                reaped = await self.pool.fetch(
                    q("reap_expired_leases"), 100, self.config.retry_base_seconds, self.config.retry_cap_seconds
                )
            except CONNECTION_ERRORS as exc:
                log.warning("reaper failed (%s)", type(exc).__name__)
                reaped = []
            for r in reaped:
                log.warning(
                    "job=%s event=lease_expired now=%s attempt=%d/%d",
                    r["id"],
                    r["status"],
                    r["attempts"],
                    r["max_attempts"],
                )
            if reaped or self.config.poll_only:
                self._due()
            await asyncio.sleep(self.config.poll_interval)

    # -- helpers -------------------------------------------------------------------------------

    async def _retrying(self, make: Callable[[], Awaitable[Any]], what: str, attempts: int | None = None) -> Any:
        """Run `make()` until it stops raising connection errors (backoff capped at reconnect_cap_seconds)."""
        delay = 0.05
        tries = 0
        while True:
            try:
                return await make()
            except CONNECTION_ERRORS as exc:
                tries += 1
                if attempts is not None and tries >= attempts:
                    raise
                if self._stopping.is_set() and what in ("connect", "listen"):
                    raise
                log.warning("%s: database unavailable (%s); retrying in %.2f s", what, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(self.config.reconnect_cap_seconds, delay * 2)


def _workers_q(name: str) -> str:
    return queries("workers.sql")[name]


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The worker pool's release hook: skip asyncpg's default reset query (UNLISTEN *, RESET ALL, ...),
    a round trip per query on the hot path. Nothing here leaves session state behind: no SET, no
    LISTEN, no session advisory locks on pool connections (asyncpg still rolls back an open
    transaction). Handlers using ctx.pool must keep it that way."""


def _image_row(job: Job, image: ImageRecord) -> dict[str, Any]:
    return {
        "id": str(image.id),
        "job_id": str(job.id),
        "bucket": image.bucket,
        "path": image.path,
        "thumb_path": image.thumb_path,
        "content_type": image.content_type,
        "width": image.width,
        "height": image.height,
        "bytes": image.bytes,
        "sha256": image.sha256,
        "provider": image.provider or job.provider,
        "model": image.model or job.model,
        "seed": image.seed,
    }
