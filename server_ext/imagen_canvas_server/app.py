"""The extension app: settings as traitlets, the database and the in-process worker as services."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Int, Unicode

from imagen_worker.config import Settings
from imagen_worker.db import create_pool, resolve_database_url
from imagen_worker.migrate import pending_migrations
from imagen_worker.pipeline import ImagePipeline
from imagen_worker.queue import Worker, WorkerConfig
from imagen_worker.storage import storage_from_settings

from .handlers import HealthHandler


class ImagenService:
    """What the handlers reach through `settings["imagen"]`: the pool and the worker, once started."""

    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None
        self.worker: Worker | None = None
        self.database: str = "unknown"
        self.ready = asyncio.Event()
        self.error: str | None = None

    async def status(self) -> dict[str, Any]:
        await self.ready.wait()
        pending: list[str] = []
        if self.pool is not None:
            pending = await pending_migrations(self.pool)
        return {
            "database": self.database,
            "error": self.error,
            "pending_migrations": pending,
            "worker": None if self.worker is None else {"in_flight": self.worker.in_flight, **self.worker.stats},
        }


class ImagenCanvasApp(ExtensionApp):
    name = "imagen_canvas_server"

    database_url = Unicode(
        None,
        allow_none=True,
        config=True,
        help="PostgreSQL URL; unset: IMAGEN_DATABASE_URL, else the embedded database.",
    )
    run_worker = Bool(True, config=True, help="Run the job worker inside the Jupyter server.")
    worker_concurrency = Int(4, config=True, help="Jobs the in-process worker runs at once.")
    poll_interval = Float(5.0, config=True, help="The in-process worker's safety poll, seconds.")

    def initialize_settings(self) -> None:
        self.service = ImagenService()
        self.settings["imagen"] = self.service
        self._task = asyncio.get_event_loop().create_task(self._start_services())

    def initialize_handlers(self) -> None:
        self.handlers.extend([(r"/imagen/api/health", HealthHandler)])

    async def _start_services(self) -> None:
        service = self.service
        try:
            env = Settings.from_env()
            url = await asyncio.to_thread(resolve_database_url, self.database_url, env)
            service.database = "embedded" if not (self.database_url or env.database_url) else "configured"
            service.pool = await create_pool(url, min_size=1, max_size=4)
            if self.run_worker:
                config = WorkerConfig(concurrency=self.worker_concurrency, poll_interval=self.poll_interval)
                service.worker = Worker(url, ImagePipeline(storage_from_settings(env)), config)
                self._worker_task = asyncio.get_event_loop().create_task(service.worker.run())
            self.log.info(
                "imagen: database %s ready; worker %s", service.database, "running" if self.run_worker else "off"
            )
        except Exception as exc:
            service.error = str(exc)
            self.log.error("imagen: could not start: %s", exc)
        finally:
            service.ready.set()

    async def stop_extension(self) -> None:
        service = self.service
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if service.worker is not None:
            service.worker.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._worker_task, service.worker.config.shutdown_grace + 5)
        if service.pool is not None:
            await service.pool.close()
