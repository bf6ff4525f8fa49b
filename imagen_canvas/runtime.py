"""The kernel's connection to imagen: one background thread with its own event loop, owning the pool,
the service, the route table and the event feed, and, where no live worker can run this owner's
jobs, a worker of its own.

Everything in the notebook (the canvas's kernel transport, `generate()`, `sweep()`) goes through the
one `Runtime` of the process. Its loop is not the caller's: a synchronous call from a notebook cell
(whose own loop is running), from an IPython terminal or from a script blocks only the caller until
the work is done, and an `async` caller awaits it without blocking its loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from imagen_worker.config import Settings
from imagen_worker.db import create_pool, resolve_database_url
from imagen_worker.jobs import default_owner_id
from imagen_worker.queue import Worker, WorkerConfig
from imagen_worker.service import EventFeed, Router, Service, ServiceConfig, login_owner
from imagen_worker.storage import LocalStorage, Storage, storage_from_settings

T = TypeVar("T")
log = logging.getLogger("imagen.notebook")


@dataclass(frozen=True)
class RuntimeSettings:
    """What `imagen_canvas.configure()` sets; None means "from the environment"."""

    database_url: str | None = None
    storage: str | None = None
    default_provider: str | None = None
    owner_user_id: uuid.UUID | None = None


class Runtime:
    """The process's imagen runtime (see the module docstring). Started on first use."""

    def __init__(self, settings: RuntimeSettings | None = None) -> None:
        self.settings = settings or RuntimeSettings()
        self.owner = self.settings.owner_user_id or default_owner_id()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started: asyncio.Future[None] | None = None
        self._lock = threading.Lock()
        self.url = ""
        self.pool: asyncpg.Pool | None = None
        self.storage: Storage | None = None
        self.service: Service | None = None
        self.router: Router | None = None
        self.feed: EventFeed | None = None
        self.worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self.notices: list[Callable[[str], None]] = []

    # -- running coroutines on the runtime's loop ---------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="imagen-runtime", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def submit(self, make: Callable[[], Coroutine[Any, Any, T]]) -> concurrent.futures.Future[T]:
        """Run `make()` on the runtime's loop, once it is started; a future for its result."""

        async def run() -> T:
            await self._ensure_started()
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float | None = None) -> T:
        """Run `make()` on the runtime's loop and wait for the result (from any thread but the runtime's)."""
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError("Runtime.call from the runtime's own thread would wait forever; await instead")
        return self.submit(make).result(timeout)

    async def acall(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Await `make()` run on the runtime's loop, from another event loop."""
        return await asyncio.wrap_future(self.submit(make))

    # -- the services --------------------------------------------------------------------------

    async def _ensure_started(self) -> None:
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            try:
                await self._start()
            except BaseException as exc:
                started, self._started = self._started, None
                started.set_exception(exc)
                started.exception()  # callers waiting on it get it; unawaited, it is not logged as lost
                raise
            self._started.set_result(None)
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        env = Settings.from_env()
        if self.settings.storage is not None:
            env = dataclasses.replace(env, storage=self.settings.storage)
        self.url = await asyncio.to_thread(resolve_database_url, self.settings.database_url, env)
        self.pool = await create_pool(self.url, min_size=1, max_size=4)
        login = await login_owner(self.pool)
        if login is not None:
            self.owner = login  # a JupyterHub user's own login: the database says whose
        self.storage = storage_from_settings(env)
        if isinstance(self.storage, LocalStorage):
            # URLs a browser of this Jupyter loads through the server extension's files route.
            prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or "/"
            self.storage.url_prefix = prefix.rstrip("/") + "/imagen/files"
        overrides: dict[str, Any] = {"sign_urls": False}
        if self.settings.default_provider:
            overrides["default_provider"] = self.settings.default_provider
        config = ServiceConfig.from_env(**overrides)
        self.service = Service(self.pool, self.storage, config=config, login_owner=login)
        self.router = Router(self.service, health_extra=self._health_extra)
        self.feed = EventFeed(
            self.url, self.pool, worker_stale_seconds=config.worker_stale_seconds, login_scoped=login is not None
        )
        await self.feed.start()
        await self.feed.wait_listening()
        self._env = env

    async def _health_extra(self) -> dict[str, Any]:
        worker = self.worker
        return {
            "database": "configured" if (self.settings.database_url or self._env.database_url) else "embedded",
            "error": None,
            "worker": None if worker is None else {"in_flight": worker.in_flight, **worker.stats},
        }

    async def ensure_worker(self, provider: str | None = None, said: list[str] | None = None) -> Worker | None:
        """Start a worker for this owner in the runtime unless a live worker can already run
        `provider` (any provider when None). Returns the worker started, if one was; the notice that
        says so goes to the runtime's listeners (canvas views) and into `said`, for the caller to show."""
        assert self.service is not None
        if self.worker is not None:
            return None
        wanted = provider or self.service.config.default_provider
        workers = await self.service.live_workers(self.owner)
        if any(wanted in w["providers"] for w in workers):
            return None
        from imagen_worker.pipeline import ImagePipeline

        config = WorkerConfig(
            concurrency=4,
            poll_interval=self._env.poll_interval,
            scope="owner",
            owner_user_id=self.owner,
            lease_seconds=self._env.lease_seconds,
            job_timeout=self._env.job_timeout,
            shutdown_grace=5.0,
        )
        self.worker = Worker(self.url, ImagePipeline(storage_from_settings(self._env)), config)
        self._worker_task = asyncio.create_task(self.worker.run(), name="imagen-notebook-worker")
        # Wait for it to register, so the job about to be queued is not reported as waiting for a worker.
        for _ in range(100):
            if any(w["id"] == config.worker_id for w in await self.service.live_workers(self.owner)):
                break
            await asyncio.sleep(0.02)
        reason = "no live worker" if not workers else f"no live worker runs {wanted}"
        text = f"imagen: {reason}; started one in this kernel for your jobs ({config.worker_id})"
        if said is not None:
            said.append(text)
        self.notice(text)
        return self.worker

    def notice(self, text: str) -> None:
        """Tell the canvas views (and the log). Printing is the caller's: it happens in the caller's thread
        (see `Notices`), where Jupyter shows it under the cell that made the call."""
        log.info("%s", text)
        for callback in list(self.notices):
            with contextlib.suppress(Exception):
                callback(text)

    async def aclose(self) -> None:
        if self.worker is not None and self._worker_task is not None:
            self.worker.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._worker_task, 15)
        if self.feed is not None:
            await self.feed.stop()
        if self.storage is not None:
            with contextlib.suppress(Exception):
                await self.storage.aclose()
        if self.pool is not None:
            await self.pool.close()

    def close(self) -> None:
        """Stop the worker (if this runtime started one), the feed and the pool, then the thread."""
        if self._loop is None:
            return
        if self._started is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.aclose(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None
        self._thread = None
        self._started = None


class Notices:
    """What the runtime said during one call (that it started a worker), shown to the user once, printed
    from the caller's thread: ipykernel routes a background thread's output to the cell that started
    the thread, so the runtime's own thread printing would put it under some earlier cell, or nowhere."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self._shown = 0

    def show(self) -> None:
        while self._shown < len(self.said):
            print(self.said[self._shown], file=sys.stderr, flush=True)
            self._shown += 1


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """The process's runtime, made on first use (and closed when the process exits)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime()
            atexit.register(_close_at_exit)
        return _runtime


def _close_at_exit() -> None:
    if _runtime is not None:
        _runtime.close()


def configure(
    *,
    database_url: str | None = None,
    storage: str | None = None,
    default_provider: str | None = None,
    owner_user_id: uuid.UUID | str | None = None,
) -> Runtime:
    """Set the database URL, the storage backend (`local` or `supabase`), the default provider or the
    owner in code instead of the environment. Closes the runtime in use; the next call starts anew."""
    global _runtime
    owner = uuid.UUID(str(owner_user_id)) if owner_user_id is not None else None
    with _runtime_lock:
        old, _runtime = _runtime, Runtime(RuntimeSettings(database_url, storage, default_provider, owner))
        new = _runtime
    if old is not None:
        old.close()
    return new
