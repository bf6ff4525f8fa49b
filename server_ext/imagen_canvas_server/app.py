"""The extension app: settings as traitlets (with environment fallbacks), the service layer, the event
feed and the in-process worker as services started with the server and stopped with it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import uuid
from typing import Any

import asyncpg
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Bool, Enum, Float, Int, Unicode, default

from imagen_worker.config import Settings, _int
from imagen_worker.db import create_pool, resolve_database_url
from imagen_worker.embedded import release_embedded
from imagen_worker.jobs import default_owner_id
from imagen_worker.pipeline import ImagePipeline
from imagen_worker.queue import Worker, WorkerConfig
from imagen_worker.redact import caller_message
from imagen_worker.service import EventFeed, Router, Service, ServiceConfig, login_owner
from imagen_worker.storage import Storage, storage_from_settings
from imagen_worker.users import login_hub_name
from imagen_worker.webhooks import WebhookReceiver

from .handlers import EventsSocket, FilesHandler, ImagenAPIHandler, WebhookHandler

STARTUP_WAIT_SECONDS = 60.0
# The service's connections (the event feed's LISTEN has one more; the in-process worker its own pool).
SERVICE_POOL_SIZE = 3


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


class ImagenServices:
    """What the handlers reach through `settings["imagen"]`, once started."""

    def __init__(self, owner: uuid.UUID, websocket_send_buffer: int) -> None:
        self.owner = owner
        self.websocket_send_buffer = websocket_send_buffer
        self.pool: asyncpg.Pool | None = None
        self.service: Service | None = None
        self.router: Router | None = None
        self.feed: EventFeed | None = None
        self.storage: Storage | None = None
        self.webhooks: WebhookReceiver | None = None
        self.worker: Worker | None = None
        self.database = "unknown"
        self.embedded_data_dir: Any = None
        self.error: str | None = None
        self.ready = asyncio.Event()

    async def router_ready(self) -> Router | None:
        """The router once the services are up (None if they failed to start)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), STARTUP_WAIT_SECONDS)
        return self.router

    async def health_extra(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "error": self.error,
            "worker": None if self.worker is None else {"in_flight": self.worker.in_flight, **self.worker.stats},
        }


class ImagenCanvasApp(ExtensionApp):
    name = "imagen_canvas_server"

    database_url = Unicode(
        None,
        allow_none=True,
        config=True,
        help="PostgreSQL URL [env IMAGEN_DATABASE_URL]; unset: the embedded database.",
    )
    storage = Enum(
        ["local", "supabase"],
        None,
        allow_none=True,
        config=True,
        help="Where images are stored [env IMAGEN_STORAGE, local].",
    )
    run_worker = Bool(
        True, config=True, help="Run the job worker inside the Jupyter server [env IMAGEN_SERVER_WORKER]."
    )
    worker_concurrency = Int(
        4, config=True, help="Jobs the in-process worker runs at once [env IMAGEN_WORKER_CONCURRENCY, 4]."
    )
    worker_scope = Enum(
        ["all", "owner"],
        "all",
        config=True,
        help="The in-process worker runs every owner's jobs (all) or only this server's owner's (owner) "
        "[env IMAGEN_WORKER_SCOPE].",
    )
    poll_interval = Float(
        5.0, config=True, help="The in-process worker's safety poll, seconds [env IMAGEN_POLL_INTERVAL]."
    )
    owner_user_id = Unicode(
        None,
        allow_none=True,
        config=True,
        help="The owner of everything this server's users do [env IMAGEN_OWNER_USER_ID]; unset: the JupyterHub "
        "user the server belongs to, else this login's stable local owner id.",
    )
    default_provider = Unicode(
        None, allow_none=True, config=True, help="Provider of jobs that name none [env IMAGEN_DEFAULT_PROVIDER, local]."
    )
    max_pending_jobs = Int(
        None, allow_none=True, config=True, help="Pending jobs an owner may have [env IMAGEN_MAX_PENDING_JOBS, 500]."
    )
    worker_shutdown_grace = Float(
        5.0,
        config=True,
        help="When the server stops, seconds in-flight jobs may finish before they return to the queue.",
    )
    websocket_queue = Int(
        5000,
        config=True,
        help="Messages an event socket may fall behind before it is closed (code 4000); also the most a resume replays.",
    )
    websocket_send_buffer = Int(
        262144, config=True, help="Kernel send buffer of an event socket, bytes (0: the system's)."
    )

    @default("run_worker")
    def _run_worker_default(self) -> bool:
        raw = (_env("IMAGEN_SERVER_WORKER") or "true").lower()
        return raw not in ("0", "false", "no", "off")

    @default("worker_concurrency")
    def _concurrency_default(self) -> int:
        return _int(dict(os.environ), "IMAGEN_WORKER_CONCURRENCY", 4, minimum=1)

    @default("worker_scope")
    def _scope_default(self) -> str:
        return _env("IMAGEN_WORKER_SCOPE") or "all"

    @default("poll_interval")
    def _poll_default(self) -> float:
        return float(_env("IMAGEN_POLL_INTERVAL") or 5.0)

    def initialize_settings(self) -> None:
        owner = uuid.UUID(self.owner_user_id) if self.owner_user_id else default_owner_id()
        self.services = ImagenServices(owner, self.websocket_send_buffer)
        self.settings["imagen"] = self.services
        self._worker_task: asyncio.Task[None] | None = None
        self._stopped = False
        self._task = asyncio.get_event_loop().create_task(self._start_services(), name="imagen-start")

    def initialize_handlers(self) -> None:
        self.handlers.extend(
            [
                (r"/imagen/api/events", EventsSocket),
                (r"/imagen/api/(?P<path>.*)", ImagenAPIHandler),
                (r"/imagen/files/(?P<bucket>[^/]+)/(?P<path>.+)", FilesHandler),
                (r"/imagen/webhooks/(?P<provider>[^/]+)", WebhookHandler),
            ]
        )

    def _settings(self) -> Settings:
        env = Settings.from_env()
        if self.storage is not None:
            env = dataclasses.replace(env, storage=self.storage)
        return env

    def _storage(self, env: Settings) -> Storage:
        storage = storage_from_settings(env)
        if hasattr(storage, "url_prefix"):
            base_url = self.serverapp.base_url if self.serverapp is not None else "/"
            storage.url_prefix = url_path_join(base_url, "imagen/files")
        return storage

    async def _start_services(self) -> None:
        services = self.services
        try:
            env = self._settings()
            configured = self.database_url or env.database_url
            url = await asyncio.to_thread(resolve_database_url, self.database_url, env)
            services.database = "configured" if configured else "embedded"
            if not configured:
                services.embedded_data_dir = env.data_dir
            # A few connections, all opened at start and kept: a new one costs a fork, password
            # authentication, type introspection and compiling the triggers' functions in a new session
            # (several ms of CPU, measured by bench/hub.py), which a burst of requests would otherwise
            # pay on each of many users' servers at once; requests beyond them wait in the pool.
            services.pool = await create_pool(url, min_size=SERVICE_POOL_SIZE, max_size=SERVICE_POOL_SIZE)
            owner = await login_owner(services.pool)
            if owner is not None:
                # A JupyterHub user's own login (ADR 0008): the owner is the database's, and it must be
                # the user this server belongs to.
                hub_user = os.environ.get("JUPYTERHUB_USER")
                if hub_user and await login_hub_name(services.pool) != hub_user:
                    raise RuntimeError(
                        f"the database login belongs to another user than {hub_user}; "
                        "check the IMAGEN_DATABASE_URL the spawner gave this server"
                    )
                services.owner = owner
            services.storage = self._storage(env)
            overrides: dict[str, Any] = {}
            if self.default_provider:
                overrides["default_provider"] = self.default_provider
            if self.max_pending_jobs is not None:
                overrides["max_pending"] = self.max_pending_jobs
            config = ServiceConfig.from_env(**overrides)
            services.service = Service(services.pool, services.storage, config=config, login_owner=owner)
            services.feed = EventFeed(
                url,
                services.pool,
                queue_size=self.websocket_queue,
                worker_stale_seconds=config.worker_stale_seconds,
                login_scoped=owner is not None,
            )
            await services.feed.start()
            services.webhooks = WebhookReceiver.from_env(services.pool)
            if self.run_worker:
                worker_config = WorkerConfig(
                    concurrency=self.worker_concurrency,
                    poll_interval=self.poll_interval,
                    scope=self.worker_scope,
                    owner_user_id=services.owner if self.worker_scope == "owner" else None,
                    stale_seconds=config.worker_stale_seconds,
                    lease_seconds=env.lease_seconds,
                    job_timeout=env.job_timeout,
                    shutdown_grace=self.worker_shutdown_grace,
                )
                services.worker = Worker(url, ImagePipeline(storage_from_settings(env)), worker_config)
                self._worker_task = asyncio.get_event_loop().create_task(services.worker.run(), name="imagen-worker")
            services.router = Router(services.service, health_extra=services.health_extra)
            self.log.info(
                "imagen: database %s ready; owner %s; worker %s",
                services.database,
                services.owner,
                f"running ({self.worker_scope})" if self.run_worker else "off",
            )
        except Exception as exc:
            # It goes into 503 answers, socket close reasons and `health`: one line, no secret (a
            # database URL's password, a key in a message).
            services.error = caller_message(exc)
            self.log.error("imagen: could not start: %s", services.error)
        finally:
            services.ready.set()

    async def stop_extension(self) -> None:
        """Stop the worker (in-flight jobs get a short grace, the rest return to the queue), the feed
        and the pool; release the embedded database. Nothing is left running."""
        services = self.services
        if self._stopped:
            return
        self._stopped = True
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if services.worker is not None and self._worker_task is not None:
            services.worker.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._worker_task, services.worker.config.shutdown_grace + 5)
        if services.feed is not None:
            await services.feed.stop()
        if services.storage is not None:
            with contextlib.suppress(Exception):
                await services.storage.aclose()
        if services.pool is not None:
            await services.pool.close()
        if services.embedded_data_dir is not None:
            await asyncio.to_thread(release_embedded, services.embedded_data_dir)
