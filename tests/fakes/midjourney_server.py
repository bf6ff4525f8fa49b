"""A fake Midjourney proxy (aiohttp) speaking the midjourney-proxy protocol of novicezk/midjourney-proxy.

Routes (header `mj-api-secret` must match `api_secret`, else 401):

- `POST /mj/submit/imagine` `{"prompt", "notifyHook"?, "state"?}` → `{"code": 1, "description": "Submit
  success", "result": "<task id>", "properties": {...}}`; a prompt with one of `banned_words` →
  `{"code": 24, "description": "可能包含敏感词", "properties": {"promptEn", "bannedWord"}}`.
- `GET /mj/task/{id}/fetch` → the task JSON; an unknown id → 200 with an empty body (Spring's null).
- `GET /attachments/{id}/grid_0.png` → the finished image, a real PNG in the aspect ratio the prompt's
  `--ar W:H` (or `--aspect`) asks for, 1:1 without one; `GRID_LONG_SIDE` px on its long side, to keep
  tests fast (Midjourney's own grids are about 2048 px).

A task goes SUBMITTED "0%" → IN_PROGRESS through `progress_steps` (one per `step_seconds`) → SUCCESS
"100%" with `imageUrl`, and each change is POSTed as the task JSON to its notifyHook, if it has one
(`notifications` records (url, status answered, task status, progress)).

Faults: `plan(index)` over submits returns `queue_full` (code 23), `failure` (the task ends FAILURE with
a failReason) or None.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image, ImageDraw

from ._server import FakeServer

Plan = Callable[[int], str | None]
FAIL_REASON = "[Invalid parameter] Invalid value"
GRID_LONG_SIDE = 256
_ASPECT = re.compile(r"--(?:ar|aspect)\s+(\d+):(\d+)(?:\s|$)")


def grid_size(prompt: str) -> tuple[int, int]:
    """The grid image's size for the prompt's aspect ratio (1:1 when it names none)."""
    match = _ASPECT.search(prompt)
    w, h = (int(match.group(1)), int(match.group(2))) if match else (1, 1)
    if w >= h:
        return GRID_LONG_SIDE, round(GRID_LONG_SIDE * h / w)
    return round(GRID_LONG_SIDE * w / h), GRID_LONG_SIDE


def make_png(width: int, height: int, label: str) -> bytes:
    img = Image.new("RGB", (width, height), (60, 60 + len(label) % 180, 160))
    pen = ImageDraw.Draw(img)
    pen.line((width // 2, 0, width // 2, height), fill=(255, 255, 255), width=2)
    pen.line((0, height // 2, width, height // 2), fill=(255, 255, 255), width=2)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


@dataclass
class Notification:
    url: str
    status: int
    task_status: str
    progress: str


class FakeMidjourneyProxy(FakeServer):
    """`async with FakeMidjourneyProxy() as fake:` serves on 127.0.0.1 at `fake.base_url`."""

    def __init__(
        self,
        *,
        api_secret: str = "mj-test-secret-0123456789",
        step_seconds: float = 0.2,
        progress_steps: tuple[str, ...] = ("15%", "45%", "80%"),
    ) -> None:
        super().__init__()
        self.api_secret = api_secret
        self.step_seconds = step_seconds
        self.progress_steps = progress_steps
        self.banned_words = ("bannedword",)
        self.plan: Plan = lambda _i: None
        self.tasks: dict[str, dict[str, Any]] = {}
        self.submissions: list[dict[str, Any]] = []
        self.notifications: list[Notification] = []
        self.counts: Counter[str] = Counter()
        self.base_url = ""
        self._submits = 0
        self._files: dict[str, bytes] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/mj/submit/imagine", self._imagine)
        app.router.add_get("/mj/task/{id}/fetch", self._fetch)
        app.router.add_get("/attachments/{id}/{name}", self._file)

    def _started(self, origin: str) -> str:
        self.base_url = origin
        self._session = aiohttp.ClientSession()
        return origin

    async def stop(self) -> None:
        for run in list(self._runs):
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        await super().stop()

    def fetch_count(self, task_id: str) -> int:
        return self.counts[f"GET /mj/task/{task_id}/fetch"]

    # -- routes ------------------------------------------------------------------------------------

    async def _imagine(self, request: web.Request) -> web.StreamResponse:
        self.counts[f"POST {request.path}"] += 1
        if request.headers.get("mj-api-secret") != self.api_secret:
            return web.Response(status=401, text="")
        body = await request.json()
        self.submissions.append(body)
        prompt = str(body.get("prompt") or "")
        if not prompt.strip():
            return web.json_response({"code": 4, "description": "prompt不能为空", "properties": {}})
        banned = next((w for w in self.banned_words if w in prompt.lower()), None)
        if banned is not None:
            return web.json_response(
                {"code": 24, "description": "可能包含敏感词", "properties": {"promptEn": prompt, "bannedWord": banned}}
            )
        fault = self.plan(self._submits)
        self._submits += 1
        if fault == "queue_full":
            return web.json_response({"code": 23, "description": "队列已满，请稍后尝试", "properties": {}})
        task_id = str(int(time.time() * 1000)) + f"{random.randrange(1000):03d}"
        now = int(time.time() * 1000)
        self.tasks[task_id] = {
            "id": task_id,
            "action": "IMAGINE",
            "prompt": prompt,
            "promptEn": prompt,
            "description": f"/imagine {prompt}",
            "state": body.get("state"),
            "submitTime": now,
            "startTime": None,
            "finishTime": None,
            "imageUrl": None,
            "status": "SUBMITTED",
            "progress": "0%",
            "failReason": None,
            "properties": {"notifyHook": body.get("notifyHook"), "finalPrompt": prompt},
        }
        run = asyncio.create_task(self._run(task_id, body.get("notifyHook"), fault))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        return web.json_response(
            {"code": 1, "description": "Submit success", "result": task_id, "properties": {"discordInstanceId": "1"}}
        )

    async def _fetch(self, request: web.Request) -> web.StreamResponse:
        self.counts[f"GET {request.path}"] += 1
        if request.headers.get("mj-api-secret") != self.api_secret:
            return web.Response(status=401, text="")
        task = self.tasks.get(request.match_info["id"])
        if task is None:
            return web.Response(status=200, body=b"", content_type="application/json")
        return web.json_response(task)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self.counts[f"GET {request.path}"] += 1
        data = self._files.get(request.match_info["id"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png")

    # -- tasks -------------------------------------------------------------------------------------

    async def _run(self, task_id: str, hook: str | None, fault: str | None) -> None:
        task = self.tasks[task_id]
        await self._notify(hook, task)
        await asyncio.sleep(self.step_seconds)
        task.update(status="IN_PROGRESS", startTime=int(time.time() * 1000))
        for progress in self.progress_steps:
            task["progress"] = progress
            await self._notify(hook, task)
            await asyncio.sleep(self.step_seconds)
        if fault == "failure":
            task.update(status="FAILURE", failReason=FAIL_REASON, finishTime=int(time.time() * 1000))
        else:
            self._files[task_id] = make_png(*grid_size(task["prompt"]), task["prompt"])
            task.update(
                status="SUCCESS",
                progress="100%",
                imageUrl=f"{self.base_url}/attachments/{task_id}/grid_0.png",
                finishTime=int(time.time() * 1000),
            )
        await self._notify(hook, task)

    async def _notify(self, hook: str | None, task: dict[str, Any]) -> None:
        if not hook or self._session is None:
            return
        try:
            async with self._session.post(
                hook, data=json.dumps(task), headers={"content-type": "application/json"}
            ) as resp:
                status = resp.status
        except aiohttp.ClientError:
            status = 0
        self.notifications.append(Notification(hook, status, task["status"], task["progress"]))
