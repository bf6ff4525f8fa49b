"""What every fake provider server shares: an aiohttp app on 127.0.0.1 at a free port, started and
stopped by `async with`."""

from __future__ import annotations

from typing import Any, Self

from aiohttp import web


class FakeServer:
    """Subclasses add their routes (`_routes`) and say what URL to hand the client (`_started`)."""

    client_max_size = 1024**2  # aiohttp's default request body limit

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None

    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _middlewares(self) -> list[Any]:
        return []

    def _started(self, origin: str) -> str:
        """The URL `start()` returns, given the server's origin (`http://127.0.0.1:<port>`)."""
        return origin

    async def start(self) -> str:
        app = web.Application(middlewares=self._middlewares(), client_max_size=self.client_max_size)
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        return self._started(f"http://127.0.0.1:{self._runner.addresses[0][1]}")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()
