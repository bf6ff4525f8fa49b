"""The standalone worker's webhook endpoint: an aiohttp app serving POST /imagen/webhooks/{provider} with
the framework-neutral WebhookReceiver (the Jupyter server extension mounts the same receiver)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from .db import create_pool
from .webhooks import MAX_BODY, WebhookReceiver, error_body

log = logging.getLogger("imagen.webhooks")

ROUTE = "/imagen/webhooks/{provider}"


def make_app(receiver: WebhookReceiver) -> web.Application:
    """An aiohttp application with the one webhook route; bodies over MAX_BODY get 413."""

    async def receive(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response(error_body(413, f"the body is over {MAX_BODY} bytes"), status=413)
        status, answer = await receiver.handle(
            request.match_info["provider"], request.headers, body, query=request.query
        )
        return web.json_response(answer, status=status)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(ROUTE, receive)
    return app


class WebhookServer:
    """Serves `make_app(receiver)` on host:port (port 0: any free port) until stopped."""

    def __init__(self, receiver: WebhookReceiver, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner = web.AppRunner(make_app(receiver), access_log=None)
        self.host = host
        self.port = port

    @property
    def base_url(self) -> str:
        """http://host:port/imagen/webhooks; a provider's route is base_url + "/" + provider."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/imagen/webhooks"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                self.port = int(address[1])
                break
        log.info("webhooks listening on %s/{provider}", self.base_url)

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> WebhookServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()


@asynccontextmanager
async def serve_webhooks(database_url: str, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[WebhookServer]:
    """A webhook server with its own small pool on `database_url`, secrets from the environment."""
    pool = await create_pool(database_url, migrate=False, min_size=1, max_size=4)
    try:
        async with WebhookServer(WebhookReceiver.from_env(pool), host, port) as server:
            yield server
    finally:
        await pool.close()
