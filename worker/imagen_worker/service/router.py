"""The route table of docs/api.md, shared by the REST handlers and the kernel transport.

A transport turns what it received into a `Request` (method, path relative to `api/`, query, body,
headers), calls `Router.dispatch` with the owner it authenticated, and sends back the `Response`:
a status, a JSON body or bytes, and headers. Errors are already in the one error shape.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ..errors import ImagenError, NotFound, RequestError, ServiceUnavailable, StorageError
from ..redact import caller_message
from ..scheduling import INTERACTIVE
from .core import Service
from .models import query_variant

log = logging.getLogger("imagen.api")

# A database that cannot be reached (not asyncpg.InterfaceError at large: that is also a misuse, a bug).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InternalClientError,  # a connection a restart left mid-exchange
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes | str | Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass
class Response:
    status: int
    body: Any = None
    content: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[["Router", uuid.UUID, Request, dict[str, str]], Awaitable[Response]]
_ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []
_ID = r"(?P<id>[^/]+)"


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _ROUTES.append((method, re.compile(f"^{pattern}$"), fn))
        return fn

    return register


class Router:
    """Dispatches requests to the service on behalf of an owner. `health_extra` adds the transport's
    own facts to `GET health` (the database it uses, its in-process worker); `default_priority` is the
    priority of jobs this transport queues when the body names none."""

    def __init__(
        self,
        service: Service,
        *,
        health_extra: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        default_priority: int = INTERACTIVE,
    ) -> None:
        self.service = service
        self.health_extra = health_extra
        self.default_priority = default_priority

    async def dispatch(self, owner: uuid.UUID, request: Request) -> Response:
        path = request.path.strip("/")
        allowed: list[str] = []
        for method, pattern, handler in _ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            if method != request.method.upper():
                allowed.append(method)
                continue
            try:
                return await handler(self, owner, request, match.groupdict())
            except RequestError as exc:
                response = Response(exc.status, exc.as_json())
                retry_after = exc.extra.get("retry_after")
                if retry_after is not None:
                    response.headers["Retry-After"] = str(max(1, round(float(retry_after))))
                return response
            except UNAVAILABLE as exc:
                log.warning("api %s %s: database unavailable (%s)", request.method, path, type(exc).__name__)
                return _error(ServiceUnavailable("the database cannot be reached now; retry in a moment"))
            except StorageError as exc:
                return _error(ServiceUnavailable(f"the image store failed: {caller_message(exc)}"))
            except ImagenError as exc:
                return _error(RequestError(caller_message(exc)))
            except Exception:
                log.exception("api %s %s failed", request.method, path)
                return Response(
                    500, {"error": {"code": "internal", "message": "internal error; the server log has the details"}}
                )
        if allowed:
            return Response(
                405,
                {
                    "error": {
                        "code": "method_not_allowed",
                        "message": f"{request.method.upper()} is not allowed on {path}; use {', '.join(allowed)}",
                    }
                },
                headers={"Allow": ", ".join(allowed)},
            )
        return _error(NotFound(f"no route {path!r}; the routes are listed in docs/api.md"))


def _error(exc: RequestError) -> Response:
    return Response(exc.status, exc.as_json())


def _json(status: int, body: Any) -> Response:
    return Response(status, body)


@route("GET", "health")
async def _health(r: Router, owner: uuid.UUID, req: Request, _: dict[str, str]) -> Response:
    body = await r.service.health(owner)
    if r.health_extra is not None:
        body.update(await r.health_extra())
    return _json(200, body)


@route("POST", "jobs")
async def _create_job(r: Router, owner: uuid.UUID, req: Request, _: dict[str, str]) -> Response:
    job = await r.service.create_job(
        owner, req.body, idempotency_key=req.header("Idempotency-Key"), default_priority=r.default_priority
    )
    return _json(201, job)


@route("GET", "jobs")
async def _list_jobs(r: Router, owner: uuid.UUID, req: Request, _: dict[str, str]) -> Response:
    return _json(200, await r.service.list_jobs(owner, req.query))


@route("GET", f"jobs/{_ID}")
async def _get_job(r: Router, owner: uuid.UUID, req: Request, m: dict[str, str]) -> Response:
    return _json(200, await r.service.get_job(owner, m["id"]))


@route("POST", f"jobs/{_ID}/cancel")
async def _cancel_job(r: Router, owner: uuid.UUID, req: Request, m: dict[str, str]) -> Response:
    return _json(200, await r.service.cancel_job(owner, m["id"]))


@route("GET", f"jobs/{_ID}/events")
async def _job_events(r: Router, owner: uuid.UUID, req: Request, m: dict[str, str]) -> Response:
    return _json(200, await r.service.job_events(owner, m["id"]))


@route("GET", f"images/{_ID}")
async def _get_image(r: Router, owner: uuid.UUID, req: Request, m: dict[str, str]) -> Response:
    return _json(200, await r.service.get_image(owner, m["id"]))


@route("GET", f"images/{_ID}/content")
async def _image_content(r: Router, owner: uuid.UUID, req: Request, m: dict[str, str]) -> Response:
    content_type, data = await r.service.image_content(owner, m["id"], query_variant(req.query))
    return Response(
        200, content=data, content_type=content_type, headers={"Cache-Control": "private, max-age=3600, immutable"}
    )


@route("GET", "canvases")
async def _list_canvases(r: Router, owner: uuid.UUID, req: Request, _: dict[str, str]) -> Response:
    return _json(200, await r.service.list_canvases(owner, req.query))


@route("GET", f"canvases/{_ID}")
async def _get_canvas(r: Router, owner: uuid.UUID, req: Request, m: dict[str, str]) -> Response:
    return _json(200, await r.service.get_canvas(owner, m["id"]))


@route("PUT", f"canvases/{_ID}")
async def _save_canvas(r: Router, owner: uuid.UUID, req: Request, m: dict[str, str]) -> Response:
    created, canvas = await r.service.save_canvas(owner, m["id"], req.body)
    return _json(201 if created else 200, canvas)


@route("POST", f"canvases/{_ID}/nodes/(?P<node>[^/]+)/generate")
async def _generate_node(r: Router, owner: uuid.UUID, req: Request, m: dict[str, str]) -> Response:
    answer = await r.service.generate_node(
        owner,
        m["id"],
        m["node"],
        req.body,
        idempotency_key=req.header("Idempotency-Key"),
        default_priority=r.default_priority,
    )
    return _json(201, answer)


@route("DELETE", f"canvases/{_ID}")
async def _delete_canvas(r: Router, owner: uuid.UUID, req: Request, m: dict[str, str]) -> Response:
    await r.service.delete_canvas(owner, m["id"])
    return Response(204)


@route("GET", "providers")
async def _providers(r: Router, owner: uuid.UUID, req: Request, _: dict[str, str]) -> Response:
    return _json(200, await r.service.providers_table(owner))


@route("GET", "stats")
async def _stats(r: Router, owner: uuid.UUID, req: Request, _: dict[str, str]) -> Response:
    return _json(200, await r.service.stats(owner, req.query))


@route("GET", "workers")
async def _workers(r: Router, owner: uuid.UUID, req: Request, _: dict[str, str]) -> Response:
    return _json(200, {"workers": await r.service.live_workers(owner)})
