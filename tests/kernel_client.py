"""Run code in a Jupyter kernel over the server's kernel websocket, as a frontend does (the legacy JSON
protocol): for tests that must act inside a user's own kernel."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import aiohttp


async def execute(session: aiohttp.ClientSession, channels_url: str, code: str, *, timeout: float = 120) -> str:
    """Run `code` in the kernel behind `channels_url`; its stdout. A Python error fails with the kernel's
    traceback."""
    async with session.ws_connect(channels_url) as ws:
        msg_id = uuid.uuid4().hex
        await ws.send_json(
            {
                "header": {
                    "msg_id": msg_id,
                    "username": "tests",
                    "session": uuid.uuid4().hex,
                    "msg_type": "execute_request",
                    "version": "5.3",
                    "date": datetime.now(UTC).isoformat(),
                },
                "parent_header": {},
                "metadata": {},
                "channel": "shell",
                "buffers": [],
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
            }
        )
        out: list[str] = []
        async with asyncio.timeout(timeout):
            async for frame in ws:
                msg = json.loads(frame.data)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["header"]["msg_type"]
                if kind == "stream":
                    out.append(msg["content"]["text"])
                elif kind == "error":
                    raise AssertionError("\n".join(msg["content"]["traceback"]))
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    return "".join(out)
    raise AssertionError("the kernel never went idle")
