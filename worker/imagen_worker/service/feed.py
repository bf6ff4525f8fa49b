"""The event feed: one LISTEN connection per process fans the owners' events out to subscribers.

Subscribers are the server extension's websockets, the canvas's kernel transport and the notebook
API's waits. A notification on `imagen_job_events` only says "read": the feed reads every event it
has not yet delivered from `imagen.job_events`, by snapshot cursor (`cursor.py`, ADR 0006), so an
event is delivered once, in id order, whether its notification arrived, was lost with a dropped
connection, or came from a transaction that committed out of id order. A subscriber joining with a
cursor first gets what it missed (read as its owner, under RLS), then the live stream. Each
subscriber has a bounded queue; one that falls behind is marked `overflowed` and dropped, never
slowing the others. Canvas saves (`imagen_canvas_events`) and changes to the live workers
(`imagen_workers`, and workers ageing out) are passed on as they come; they carry no cursor.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ..queue import CONNECTION_ERRORS
from .core import as_owner, q
from .cursor import Cursor, Snapshot
from .shapes import Message, event_json, worker_json

log = logging.getLogger("imagen.feed")

CHANNELS = ("imagen_job_events", "imagen_canvas_events", "imagen_workers")
# The most events one read delivers; a bigger backlog is read in several rounds (the cursor's terms
# say where a round stopped).
READ_LIMIT = 5000
# A subscriber's queue: room for a burst (a batch claim of hundreds of jobs is hundreds of events
# in one read) and for a whole replay, yet bounded (a few MB) for one that stopped reading.
QUEUE_SIZE = 5000
# A read also runs this often without a notification (a notification lost while reconnecting is
# covered by the read after the reconnect; this is the belt to those braces).
SAFETY_READ_SECONDS = 5.0


class Subscription:
    """One subscriber's stream: `await get()` returns the next message (a dict); after `close()` or an
    overflow, `get()` raises `StreamClosed`. Cancelling a `get()` loses nothing."""

    def __init__(self, owner: uuid.UUID, maxsize: int) -> None:
        self.owner = owner
        self.maxsize = maxsize
        self._messages: collections.deque[dict[str, Any]] = collections.deque()
        self._available = asyncio.Event()
        self.overflowed = False
        self.closed = asyncio.Event()

    def offer(self, message: dict[str, Any]) -> None:
        if self.closed.is_set():
            return
        if len(self._messages) >= self.maxsize:
            self.overflowed = True
            self.close()
            return
        self._messages.append(message)
        self._available.set()

    def close(self) -> None:
        self.closed.set()
        self._available.set()

    async def get(self) -> dict[str, Any]:
        while not self._messages:
            if self.closed.is_set():
                raise StreamClosed("closed")
            self._available.clear()
            await self._available.wait()
        if self.overflowed:
            raise StreamClosed("overflowed")
        return self._messages.popleft()

    def pending(self) -> int:
        return len(self._messages)


class StreamClosed(Exception):
    """The subscription ended: `str(exc)` is "overflowed" (the subscriber fell behind) or "closed"."""


class EventFeed:
    """Reads and fans out the events of the owners subscribed in this process.

    `dsn` is for the LISTEN connection; `pool` runs the reads (its role decides what the feed can
    see: a service connection sees every owner, a user's own login only that user)."""

    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        *,
        queue_size: int = QUEUE_SIZE,
        worker_stale_seconds: float = 30.0,
        reconnect_cap_seconds: float = 1.0,
    ) -> None:
        if queue_size < 32:
            raise ValueError("queue_size must be at least 32")
        self.dsn = dsn
        self.pool = pool
        self.queue_size = queue_size
        self.worker_stale_seconds = worker_stale_seconds
        # The most events a resume replays (it must fit the queue, with the hello); past that the
        # subscriber gets `reset` and reloads over REST.
        self.replay_limit = queue_size - 16
        self.reconnect_cap_seconds = reconnect_cap_seconds
        self._subs: dict[uuid.UUID, set[Subscription]] = {}
        self._cursor: Cursor | None = None
        self._snapshot: Snapshot | None = None
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncpg.Connection | None = None
        self._listening = asyncio.Event()
        self._workers: list[dict[str, Any]] | None = None
        self._workers_changed = asyncio.Event()
        self._stopping = False
        self.stats = {"reads": 0, "events": 0, "overflows": 0}

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen_loop(), name="imagen-feed-listen"),
            asyncio.create_task(self._read_loop(), name="imagen-feed-read"),
            asyncio.create_task(self._workers_loop(), name="imagen-feed-workers"),
        ]

    async def wait_listening(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a readiness wait
        await asyncio.wait_for(self._listening.wait(), timeout)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None
        for subs in self._subs.values():
            for sub in subs:
                sub.close()
        self._subs.clear()

    # -- subscribing ---------------------------------------------------------------------------

    async def subscribe(self, owner: uuid.UUID, since: Cursor | None = None) -> Subscription:
        """A stream of `owner`'s events: first a `hello` (the cursor now, the live workers), then what
        `since` missed (or a `reset` when that is more than the replay limit), then live events."""
        sub = Subscription(owner, self.queue_size)
        async with self._lock:
            await self._read()  # the feed's cursor is now current; existing subscribers got theirs
            assert self._cursor is not None and self._snapshot is not None
            head = self._cursor
            workers = [w for w in (self._workers or await self._read_workers()) if _visible(w, owner)]
            sub.offer(
                {"kind": "hello", "cursor": (since or head).encode(), "owner_user_id": str(owner), "workers": workers}
            )
            if since is not None:
                await self._replay(sub, since.clamp(self._snapshot.xmax), head)
            self._subs.setdefault(owner, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        subs = self._subs.get(sub.owner)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.owner]

    async def _replay(self, sub: Subscription, since: Cursor, head: Cursor) -> None:
        """What `since` has not seen up to the feed's snapshot, read as the owner."""
        assert self._snapshot is not None
        upto = self._snapshot
        base, snaps, ids = since.query_args()
        async with as_owner(self.pool, sub.owner) as conn:
            row = await conn.fetchrow(
                q("events_after"), base, snaps, ids, [sub.owner], self.replay_limit + 1, upto.text()
            )
        assert row is not None
        events = row["events"]
        if len(events) > self.replay_limit:
            sub.offer(
                {
                    "kind": "reset",
                    "cursor": head.encode(),
                    "message": f"more than {self.replay_limit} events were missed; reload and go on from cursor",
                }
            )
            return
        for ev in events:
            sub.offer(event_json(ev, since.after(upto, ev["id"]).encode()))

    # -- reading -------------------------------------------------------------------------------

    def poke(self) -> None:
        """Ask for a read now (a notification did, or a caller knows something changed)."""
        self._dirty.set()

    async def _read_loop(self) -> None:
        delay = 0.05
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), SAFETY_READ_SECONDS)
            self._dirty.clear()
            try:
                async with self._lock:
                    if self._subs or self._cursor is None:
                        await self._read()
                delay = 0.05
            except CONNECTION_ERRORS as exc:
                log.warning("event read failed (%s); retrying in %.2f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(self.reconnect_cap_seconds, delay * 2)
                self._dirty.set()

    async def _read(self) -> None:
        """Deliver every event not yet delivered to the owners subscribed (caller holds the lock)."""
        while True:
            if self._cursor is None:
                text = await self.pool.fetchval(q("current_snapshot"))
                self._snapshot = Snapshot.parse(text)
                self._cursor = Cursor(self._snapshot)
                return
            owners = list(self._subs)
            if not owners:
                # Nobody to deliver to: move the cursor to now without reading the events between.
                self._snapshot = Snapshot.parse(await self.pool.fetchval(q("current_snapshot")))
                self._cursor = Cursor(self._snapshot)
                return
            base, snaps, ids = self._cursor.query_args()
            row = await self.pool.fetchrow(q("events_after"), base, snaps, ids, owners, READ_LIMIT, None)
            assert row is not None
            snapshot = Snapshot.parse(row["snapshot"])
            if snapshot.xmax < self._cursor.xmax:
                # The server's transaction ids went back: a crash lost transactions that had not reached
                # disk (asynchronous commits). Forget those ids, so their reuse is not taken as seen.
                log.warning(
                    "transaction ids went back (%d < %d): the database restarted after a crash",
                    snapshot.xmax,
                    self._cursor.xmax,
                )
                self._cursor = self._cursor.clamp(snapshot.xmax)
                continue
            self.stats["reads"] += 1
            events = row["events"]
            cursor = self._cursor
            for ev in events:
                subs = self._subs.get(uuid.UUID(ev["owner_user_id"]))
                if subs:
                    message = event_json(ev, cursor.after(snapshot, ev["id"]).encode())
                    for sub in list(subs):
                        self._offer(sub, message)
            self.stats["events"] += len(events)
            self._snapshot = snapshot
            if len(events) < READ_LIMIT:
                self._cursor = Cursor(snapshot)
                return
            self._cursor = cursor.after(snapshot, events[-1]["id"])

    def _offer(self, sub: Subscription, message: dict[str, Any]) -> None:
        sub.offer(message)
        if sub.overflowed:
            self.stats["overflows"] += 1
            self.unsubscribe(sub)

    # -- notifications ---------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        delay = 0.05
        while not self._stopping:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self.dsn)
            except Exception as exc:  # any failure to connect: wait and try again
                log.warning("event LISTEN connection failed (%s); retrying in %.2f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(self.reconnect_cap_seconds, delay * 2)
                continue
            delay = 0.05
            self._listener = conn
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            try:
                for channel in CHANNELS:
                    await conn.add_listener(channel, self._on_notify)
            except CONNECTION_ERRORS:
                continue
            self._listening.set()
            self._dirty.set()  # read what came while nobody listened
            self._workers = None
            await lost.wait()
            self._listening.clear()
            log.warning("event LISTEN connection lost; reconnecting")

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        if channel == "imagen_job_events":
            if self._subs:
                self._dirty.set()
        elif channel == "imagen_canvas_events":
            self._on_canvas(str(payload))
        elif channel == "imagen_workers":
            self._workers_changed.set()

    def _on_canvas(self, payload: str) -> None:
        try:
            note = json.loads(payload)
            owner = uuid.UUID(note["owner_user_id"])
        except (ValueError, KeyError, TypeError):
            return
        subs = self._subs.get(owner)
        if not subs:
            return
        message = {
            "kind": "canvas",
            "canvas_id": note.get("canvas_id"),
            "version": note.get("version"),
            "ts": datetime.now(UTC).isoformat(),
        }
        for sub in list(subs):
            self._offer(sub, message)

    # -- live workers --------------------------------------------------------------------------

    async def _read_workers(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(q("live_workers"), self.worker_stale_seconds)
        return [worker_json(dict(r)) for r in rows]

    async def _workers_loop(self) -> None:
        """Tell subscribers when the live workers change: one registers or leaves (a notification), or
        one ages out (checked every third of the stale time)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._workers_changed.wait(), self.worker_stale_seconds / 3)
            self._workers_changed.clear()
            try:
                workers = await self._read_workers()
            except CONNECTION_ERRORS:
                continue
            if workers != self._workers and self._workers is not None:
                self._broadcast_workers(workers)
            self._workers = workers

    def _broadcast_workers(self, workers: list[dict[str, Any]]) -> None:
        for owner, subs in list(self._subs.items()):
            visible = [w for w in workers if _visible(w, owner)]
            message = Message(kind="workers", workers=visible)
            for sub in list(subs):
                self._offer(sub, message)

    def owners(self) -> Iterable[uuid.UUID]:
        return list(self._subs)


def _visible(worker: dict[str, Any], owner: uuid.UUID) -> bool:
    return worker["scope"] == "all" or worker.get("owner_user_id") == str(owner)
