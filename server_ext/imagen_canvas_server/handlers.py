"""HTTP and websocket handlers: thin adapters from Tornado to the service layer (docs/api.md).

Every route but the webhooks is `@web.authenticated` (or `@ws_authenticated`) and authorized on
resource `imagen`; the owner is the server's (`ImagenServices.owner`), never the caller's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import os
import socket
import time
from typing import TYPE_CHECKING, Any, ClassVar

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import allow_unauthenticated, authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web, websocket

from imagen_worker.errors import InvalidField, RequestError
from imagen_worker.service import Cursor, Request
from imagen_worker.service.shapes import Message
from imagen_worker.storage import LocalStorage
from imagen_worker.webhooks import error_body

if TYPE_CHECKING:
    from .app import ImagenServices

AUTH_RESOURCE = "imagen"
# Close codes of the event socket (docs/api.md).
CLOSE_FELL_BEHIND = 4000
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAVAILABLE = 4503
_STATUS_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    503: "unavailable",
}


class _ImagenMixin:
    settings: dict[str, Any]
    _reason: str
    finish: Any

    @property
    def imagen(self) -> ImagenServices:
        services: ImagenServices = self.settings["imagen"]
        return services

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own refusals (no login, XSRF, a body too large) in the one error shape."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        code = _STATUS_CODES.get(status_code, "internal" if status_code >= 500 else "invalid_request")
        if message and "xsrf" in message.lower():
            code = "xsrf"
            message = "the XSRF token is missing or wrong; send the _xsrf cookie's value as the X-XSRFToken header"
        if status_code >= 500:
            message = "internal error; the server log has the details"
        self.finish(json.dumps({"error": {"code": code, "message": message}}))


class ImagenAPIHandler(_ImagenMixin, APIHandler):
    """Every `{base_url}imagen/api/…` route but the websocket, through the shared route table."""

    auth_resource = AUTH_RESOURCE

    async def _dispatch(self, path: str) -> None:
        services = self.imagen
        router = await services.router_ready()
        if router is None:
            self._send(503, {"error": {"code": "unavailable", "message": services.error or "starting"}})
            return
        request = Request(
            method=self.request.method or "GET",
            path=path,
            query={k: self.get_query_argument(k) for k in self.request.query_arguments},
            body=self.request.body if self.request.method in ("POST", "PUT") else None,
            headers=dict(self.request.headers),
        )
        response = await router.dispatch(services.owner, request)
        for name, value in response.headers.items():
            self.set_header(name, value)
        if response.content is not None:
            self.set_status(response.status)
            self.set_header("X-Content-Type-Options", "nosniff")
            self.finish(response.content, set_content_type=response.content_type)
            return
        self._send(response.status, response.body)

    def _send(self, status: int, body: Any) -> None:
        self.set_status(status)
        if body is None:
            self.finish()
            return
        self.finish(json.dumps(body))

    @web.authenticated
    @authorized
    async def get(self, path: str) -> None:
        await self._dispatch(path)

    @web.authenticated
    @authorized
    async def post(self, path: str) -> None:
        await self._dispatch(path)

    @web.authenticated
    @authorized
    async def put(self, path: str) -> None:
        await self._dispatch(path)

    @web.authenticated
    @authorized
    async def delete(self, path: str) -> None:
        await self._dispatch(path)


class EventsSocket(_ImagenMixin, WebSocketMixin, websocket.WebSocketHandler, JupyterHandler):
    """`{base_url}imagen/api/events`: the owner's events, live and resumable with `?since=<cursor>`.

    Authorized before the upgrade, as jupyter_server's kernel websocket is. A message is written when
    the previous one has reached the kernel's send buffer; until then messages queue in the
    subscription. The feed drops a socket that falls its queue behind, and the socket is then closed
    with code 4000 (reconnect with `since`), so a reader that stalls never slows the others.
    """

    auth_resource = AUTH_RESOURCE
    _sub: Any = None
    _tasks: tuple[asyncio.Task[None], ...] = ()
    _writing: Any = None

    async def pre_get(self) -> None:
        user = self.current_user
        if not await ensure_async(self.authorizer.is_authorized(self, user, "read", AUTH_RESOURCE)):
            raise web.HTTPError(403)

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await self.pre_get()
        result = super().get(*args, **kwargs)
        if result is not None:
            await result

    async def open(self, *args: Any, **kwargs: Any) -> None:
        super().open(*args, **kwargs)  # starts the pings
        services = self.imagen
        try:
            raw = self.get_query_argument("since", None)
            since = Cursor.decode(raw) if raw else None
        except InvalidField as exc:
            self.close(CLOSE_BAD_REQUEST, str(exc)[:120])
            return
        if await services.router_ready() is None or services.feed is None:
            self.close(CLOSE_UNAVAILABLE, (services.error or "the event feed is not running")[:120])
            return
        self._bound_send_buffer(services.websocket_send_buffer)
        try:
            self._sub = await services.feed.subscribe(services.owner, since)
        except RequestError as exc:
            self.close(CLOSE_BAD_REQUEST, str(exc)[:120])
            return
        # Messages are written as the feed hands them over while the socket keeps up (no task hop per
        # message); behind a write not yet flushed they queue in the subscription, up to its bound.
        self._sub.push = self._push
        if (first := self._sub.pop()) is not None:  # the hello; the rest of a replay follows it
            self._push(first)
        self._tasks = (asyncio.create_task(self._watch_overflow(), name="imagen-ws-watch"),)

    def _bound_send_buffer(self, size: int) -> None:
        # A bounded kernel send buffer, so a reader that stalls is noticed after `size` bytes rather
        # than after the several MB that autotuning would queue for it.
        conn = self.ws_connection
        stream = getattr(conn, "stream", None)
        sock = getattr(stream, "socket", None)
        if size > 0 and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    def _push(self, message: dict[str, Any]) -> bool:
        if self._writing is not None and not self._writing.done():
            return False
        text = message.json_text() if isinstance(message, Message) else json.dumps(message)
        try:
            self._writing = self.write_message(text)
        except websocket.WebSocketClosedError:
            return True  # gone: on_close drops the subscription
        self._writing.add_done_callback(self._written)
        return True

    def _written(self, future: asyncio.Future[None]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        sub = self._sub
        if sub is not None and not sub.closed.is_set() and (queued := sub.pop()) is not None:
            self._push(queued)

    async def _watch_overflow(self) -> None:
        sub = self._sub
        await sub.closed.wait()
        if sub.overflowed and self.ws_connection is not None:
            self.log.warning("imagen: an event socket fell %d messages behind; closing it", sub.maxsize)
            self.close(CLOSE_FELL_BEHIND, "fell behind: reconnect with since=<last cursor>")

    def on_message(self, message: str | bytes) -> None:
        """Clients send nothing the server needs; anything sent is ignored."""

    def on_close(self) -> None:
        services = self.imagen
        if self._sub is not None and services.feed is not None:
            services.feed.unsubscribe(self._sub)
        for task in self._tasks:
            task.cancel()


class FilesHandler(_ImagenMixin, APIHandler):
    """`{base_url}imagen/files/{bucket}/{path}?expires=…&sig=…`: the local store's bytes, for the
    signed-in owner's own images, with a valid unexpired signature; immutable and ETagged."""

    auth_resource = AUTH_RESOURCE
    _TYPES: ClassVar[dict[str, str]] = {
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".webp": "image/webp",
        ".gif": "image/gif",
        ".avif": "image/avif",
    }

    @web.authenticated
    @authorized
    async def get(self, bucket: str, path: str) -> None:
        services = self.imagen
        await services.router_ready()
        storage = services.storage
        if not isinstance(storage, LocalStorage) or bucket != storage.bucket:
            raise web.HTTPError(404)
        try:
            expires = int(self.get_query_argument("expires", ""))
        except ValueError:
            raise web.HTTPError(403, "unsigned or malformed file URL") from None
        signature = self.get_query_argument("sig", "")
        if not storage.verify(path, expires, signature):
            raise web.HTTPError(403, "the file URL's signature is wrong or expired; ask the API for a fresh URL")
        if path.split("/", 1)[0] != str(services.owner):
            raise web.HTTPError(403, "this image belongs to another owner")
        try:
            target = storage.file_path(path)
        except Exception:
            raise web.HTTPError(404) from None
        found = await asyncio.to_thread(_locate, str(storage.root / storage.bucket), str(target))
        if found is None:
            raise web.HTTPError(404)
        real, stat = found
        etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        content_type = self._TYPES.get(os.path.splitext(real)[1].lower()) or mimetypes.guess_type(real)[0]
        if content_type is None or not content_type.startswith("image/"):
            raise web.HTTPError(404)
        self.set_header("ETag", etag)
        self.set_header("Cache-Control", f"private, max-age={max(0, expires - int(time.time()))}, immutable")
        self.set_header("X-Content-Type-Options", "nosniff")
        if etag in (self.request.headers.get("If-None-Match") or ""):
            self.set_status(304)
            self.finish(set_content_type=content_type)
            return
        data = await asyncio.to_thread(_read, real)
        self.finish(data, set_content_type=content_type)

    def compute_etag(self) -> None:
        return None  # set above, from the file's size and mtime


def _locate(root: str, target: str) -> tuple[str, os.stat_result] | None:
    """The file's real path and stat, if it is a regular file inside `root` once symlinks are resolved."""
    real = os.path.realpath(target)
    if not real.startswith(os.path.realpath(root) + os.sep):
        return None
    try:
        stat = os.stat(real)
    except OSError:
        return None
    return (real, stat) if os.path.isfile(real) else None


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


class WebhookHandler(_ImagenMixin, JupyterHandler):
    """`POST {base_url}imagen/webhooks/{provider}`: provider callbacks, verified by signature alone
    (no session: providers have none). Useful only where providers can reach this server."""

    def check_xsrf_cookie(self) -> None:
        """A provider's POST carries its signature, not our XSRF cookie."""

    @allow_unauthenticated
    async def post(self, provider: str) -> None:
        services = self.imagen
        await services.router_ready()
        receiver = services.webhooks
        if receiver is None:
            self.set_status(503)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(error_body(503, services.error or "webhooks are not ready")))
            return
        status, body = await receiver.handle(
            provider,
            dict(self.request.headers),
            self.request.body,
            query={k: self.get_query_argument(k) for k in self.request.query_arguments},
        )
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))
