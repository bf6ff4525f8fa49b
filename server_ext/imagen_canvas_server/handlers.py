"""HTTP handlers: thin, authenticated; the logic lives in the services."""

from __future__ import annotations

import json

from jupyter_server.base.handlers import APIHandler
from tornado import web


class HealthHandler(APIHandler):
    """`GET imagen/api/health`: database, migrations and worker state."""

    auth_resource = "imagen"

    @web.authenticated
    async def get(self) -> None:
        self.finish(json.dumps(await self.settings["imagen"].status()))
