"""Helpers for tests of the server extension over HTTP and its websocket (pytest-jupyter)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from tornado.httpclient import HTTPClientError, HTTPResponse
from tornado.websocket import WebSocketClientConnection

Fetch = Callable[..., Any]


async def api(jp_fetch: Fetch, *parts: str, method: str = "GET", body: Any = None, **kw: Any) -> tuple[int, Any]:
    """(status, JSON body) of `imagen/api/<parts>`, errors included (no exception on 4xx/5xx)."""
    if body is not None and not isinstance(body, bytes | str):
        body = json.dumps(body)
    if method in ("POST", "PUT") and body is None:
        body = b""
    try:
        response: HTTPResponse = await jp_fetch("imagen", "api", *parts, method=method, body=body, **kw)
    except HTTPClientError as exc:
        assert exc.response is not None, exc
        response = exc.response
    text = response.body.decode() if response.body else ""
    return response.code, (
        json.loads(text) if text and "json" in (response.headers.get("Content-Type") or "") else text
    )


async def ready(jp_fetch: Fetch) -> dict[str, Any]:
    """Wait until the extension's services answer; return the health body."""
    status, body = await api(jp_fetch, "health", request_timeout=70)
    assert status == 200, body
    assert body["error"] is None, body
    return dict(body)


async def message(ws: WebSocketClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    text = await asyncio.wait_for(ws.read_message(), timeout)
    assert text is not None, f"the socket closed (code {ws.close_code}, {ws.close_reason!r})"
    assert isinstance(text, str)
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


async def messages_until(
    ws: WebSocketClientConnection, done: Callable[[dict[str, Any]], bool], timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Every message up to and including the first for which `done` is true."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no message matched within {timeout} s; got {out[-5:]}"
        msg = await message(ws, left)
        out.append(msg)
        if done(msg):
            return out


def finished(job_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: (
        m.get("job_id") == job_id and m.get("kind") == "state" and m.get("status") in ("done", "failed", "cancelled")
    )
