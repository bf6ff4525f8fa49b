"""A fake Replicate HTTP API (aiohttp) that answers the way api.replicate.com does, and calls back with
Standard Webhooks-signed deliveries the way Replicate does.

Routes (`authorization: Bearer <token>`, else 401 `{"title": "Unauthenticated", "detail", "status"}`):

- `POST /v1/models/{owner}/{name}/predictions` `{"input", "webhook"?, "webhook_events_filter"?}` → 201
  with the prediction (`starting`); an unknown model → 404; no `input.prompt` → 422 `Input validation
  failed`; `Prefer: wait=N` holds the answer until the prediction ends or N s pass.
- `POST /v1/predictions` `{"version", "input", ...}`: the same, by version id.
- `GET /v1/predictions/{id}`; `POST /v1/predictions/{id}/cancel` (→ `canceled` unless it had ended).
- `GET /files/{id}/out-0.png`: the output, a real PNG (served the way replicate.delivery serves it).

A prediction goes starting → processing (logs with `Using seed: N` and tqdm percentages) → succeeded
after `run_seconds`, unless `hold` is set: then only `finish(id)` or a cancel ends it. When it ends and
its `webhook_events_filter` has "completed", the fake POSTs the prediction to its webhook URL with
`webhook-id`, `webhook-timestamp` and `webhook-signature` headers made with `webhook_secret`;
`deliver_webhooks = False` drops them, as when no webhook can reach us. `deliveries` records each
(url, status answered, headers, body).

Faults: `plan(index)` over create calls (0-based) returns `rate_limit` (429 with retry-after),
`server_error` (500) or `nsfw` (the prediction fails with Replicate's NSFW error); `file_failures`
makes the next N output downloads answer 500.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import random
import secrets
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image, ImageDraw
from standardwebhooks import Webhook

from ._server import FakeServer

# Known models and whether their output is a list of URLs (flux-schnell, -dev) or one URL (1.1-pro).
MODELS = {
    "black-forest-labs/flux-schnell": True,
    "black-forest-labs/flux-dev": True,
    "black-forest-labs/flux-1.1-pro": False,
}
NSFW_ERROR = "NSFW content detected. Try running it again, or try a different prompt."

Plan = Callable[[int], str | None]


def make_png(width: int, height: int, label: str) -> bytes:
    img = Image.new("RGB", (width, height), (200, 80 + len(label) % 150, 60))
    ImageDraw.Draw(img).ellipse((8, 8, width - 8, height - 8), outline=(255, 255, 255), width=3)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _prediction_id() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=26))


@dataclass
class Delivery:
    url: str
    status: int
    headers: dict[str, str]
    body: str


class FakeReplicate(FakeServer):
    """`async with FakeReplicate() as fake:` serves on 127.0.0.1 at `fake.base_url`."""

    def __init__(
        self,
        *,
        api_token: str = "r8_testfaketoken0123456789abcdef",
        webhook_secret: str | None = None,
        run_seconds: float = 0.3,
    ) -> None:
        super().__init__()
        self.api_token = api_token
        self.webhook_secret = webhook_secret or "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.run_seconds = run_seconds
        self.hold = False
        self.deliver_webhooks = True
        self.file_failures = 0
        self.plan: Plan = lambda _i: None
        self.predictions: dict[str, dict[str, Any]] = {}
        self.counts: Counter[str] = Counter()
        self.deliveries: list[Delivery] = []
        self.cancelled: list[str] = []
        self.base_url = ""
        self._creates = 0
        self._files: dict[str, bytes] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self._create_for_model)
        app.router.add_post("/v1/predictions", self._create_for_version)
        app.router.add_get("/v1/predictions/{id}", self._get)
        app.router.add_post("/v1/predictions/{id}/cancel", self._cancel)
        app.router.add_get("/files/{id}/{name}", self._file)

    def _started(self, origin: str) -> str:
        self.base_url = origin
        self._session = aiohttp.ClientSession()
        return origin

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        await super().stop()

    # -- test controls -----------------------------------------------------------------------------

    def add_prediction(self, model: str, prompt: str, *, webhook: str | None = None) -> str:
        """A prediction created out of band (e.g. by an earlier attempt); it runs like any other."""
        return self._new(model, {"prompt": prompt}, webhook, ["completed"] if webhook else None, None)["id"]

    def finish(self, prediction_id: str) -> None:
        """End a held prediction successfully now."""
        self._succeed(prediction_id)

    def sign(self, body: str, *, msg_id: str | None = None, timestamp: datetime | None = None) -> dict[str, str]:
        """Standard Webhooks headers for `body`, as Replicate sends them."""
        msg_id = msg_id or f"msg_{secrets.token_hex(12)}"
        when = timestamp or datetime.now(UTC)
        signature = Webhook(self.webhook_secret).sign(msg_id, when, body)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": signature,
            "content-type": "application/json",
        }

    def get_count(self, prediction_id: str) -> int:
        return self.counts[f"GET /v1/predictions/{prediction_id}"]

    @property
    def creates(self) -> int:
        return self._creates

    # -- routes ------------------------------------------------------------------------------------

    async def _create_for_model(self, request: web.Request) -> web.StreamResponse:
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        return await self._create(request, model, None)

    async def _create_for_version(self, request: web.Request) -> web.StreamResponse:
        return await self._create(request, None, "version")

    async def _create(self, request: web.Request, model: str | None, by: str | None) -> web.StreamResponse:
        self.counts[f"POST {request.path}"] += 1
        if not self._authorized(request):
            return _unauthenticated()
        try:
            body = await request.json()
        except ValueError:
            return _problem(400, "Invalid JSON", "The request body is not valid JSON.")
        version = body.get("version") if by else None
        if by and not isinstance(version, str):
            return _problem(422, "Input validation failed", "- version: version is required")
        model = model or "black-forest-labs/flux-schnell"
        if model not in MODELS:
            return _problem(404, "Not found", "The requested resource could not be found.")
        inp = body.get("input")
        if not isinstance(inp, dict) or not str(inp.get("prompt") or "").strip():
            return _problem(422, "Input validation failed", "- input: prompt is required")
        index = self._creates
        self._creates += 1
        fault = self.plan(index)
        if fault == "rate_limit":
            return _problem(
                429, "Request was throttled", "Request was throttled. Expected available in 1 second.", retry_after=1
            )
        if fault == "server_error":
            return _problem(500, "Internal Server Error", "Internal server error")
        prediction = self._new(model, inp, body.get("webhook"), body.get("webhook_events_filter"), fault)
        prefer = request.headers.get("prefer", "")
        if prefer.startswith("wait"):
            seconds = float(prefer.partition("=")[2] or 60)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended[prediction["id"]].wait(), seconds)
        return web.json_response(prediction, status=201)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        self.counts[f"GET {request.path}"] += 1
        if not self._authorized(request):
            return _unauthenticated()
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        return web.json_response(prediction)

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        self.counts[f"POST {request.path}"] += 1
        if not self._authorized(request):
            return _unauthenticated()
        prediction_id = request.match_info["id"]
        prediction = self.predictions.get(prediction_id)
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        self.cancelled.append(prediction_id)
        if prediction["status"] in ("starting", "processing"):
            prediction.update(status="canceled", completed_at=_now())
            self._end(prediction_id)
        return web.json_response(prediction)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self.counts[f"GET {request.path}"] += 1
        if self.file_failures > 0:
            self.file_failures -= 1
            return web.Response(status=500, text="Internal Server Error")
        data = self._files.get(request.match_info["id"])
        if data is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=data, content_type="image/png")

    # -- predictions -------------------------------------------------------------------------------

    def _new(
        self,
        model: str,
        inp: dict[str, Any],
        webhook: str | None,
        events: list[str] | None,
        fault: str | None,
    ) -> dict[str, Any]:
        prediction_id = _prediction_id()
        prediction: dict[str, Any] = {
            "id": prediction_id,
            "model": model,
            "version": "hidden",
            "input": inp,
            "logs": "",
            "output": None,
            "data_removed": False,
            "error": None,
            "status": "starting",
            "created_at": _now(),
            "urls": {
                "cancel": f"{self.base_url}/v1/predictions/{prediction_id}/cancel",
                "get": f"{self.base_url}/v1/predictions/{prediction_id}",
                "web": f"https://replicate.com/p/{prediction_id}",
            },
        }
        if webhook:
            prediction["webhook"] = webhook
            prediction["webhook_events_filter"] = events or ["start", "output", "logs", "completed"]
        self.predictions[prediction_id] = prediction
        self._ended[prediction_id] = asyncio.Event()
        task = asyncio.create_task(self._run(prediction_id, fault))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return prediction

    async def _run(self, prediction_id: str, fault: str | None) -> None:
        prediction = self.predictions[prediction_id]
        seed = int(prediction["input"].get("seed") or random.randrange(1, 2**31))
        await asyncio.sleep(self.run_seconds / 3)
        if prediction["status"] != "starting":
            return
        prediction.update(status="processing", started_at=_now(), logs=f"Using seed: {seed}\n  0%|          | 0/4\n")
        for step in (1, 2):
            await asyncio.sleep(self.run_seconds / 3)
            if prediction["status"] != "processing":
                return
            prediction["logs"] += f" {step * 25}%|██▌       | {step}/4\n"
        if self.hold:
            return
        await asyncio.sleep(self.run_seconds / 3)
        if prediction["status"] != "processing":
            return
        if fault == "nsfw":
            prediction.update(status="failed", error=NSFW_ERROR, completed_at=_now())
            self._end(prediction_id)
            return
        self._succeed(prediction_id)

    def _succeed(self, prediction_id: str) -> None:
        prediction = self.predictions[prediction_id]
        if prediction["status"] not in ("starting", "processing"):
            return
        ratio = str(prediction["input"].get("aspect_ratio") or "1:1")
        w, h = (int(x) for x in ratio.split(":"))
        width, height = (96, max(8, 96 * h // w)) if w >= h else (max(8, 96 * w // h), 96)
        self._files[prediction_id] = make_png(width, height, str(prediction["input"].get("prompt")))
        url = f"{self.base_url}/files/{prediction_id}/out-0.png"
        prediction.update(
            status="succeeded",
            output=[url] if MODELS.get(prediction["model"], True) else url,
            completed_at=_now(),
            metrics={"predict_time": round(self.run_seconds, 3), "image_count": 1},
        )
        prediction["logs"] += "100%|██████████| 4/4\n"
        self._end(prediction_id)

    def _end(self, prediction_id: str) -> None:
        self._ended[prediction_id].set()
        prediction = self.predictions[prediction_id]
        if prediction.get("webhook") and "completed" in prediction.get("webhook_events_filter", []):
            task = asyncio.create_task(self._deliver(prediction))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, prediction: dict[str, Any]) -> None:
        if not self.deliver_webhooks or self._session is None:
            return
        body = json.dumps(prediction)
        headers = self.sign(body)
        try:
            async with self._session.post(prediction["webhook"], data=body, headers=headers) as resp:
                status = resp.status
        except aiohttp.ClientError:
            status = 0
        self.deliveries.append(Delivery(prediction["webhook"], status, headers, body))

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("authorization") in (f"Bearer {self.api_token}", f"Token {self.api_token}")


def _problem(status: int, title: str, detail: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"retry-after": str(retry_after)} if retry_after is not None else None
    return web.json_response(
        {"title": title, "detail": detail, "status": status},
        status=status,
        headers=headers,
        content_type="application/problem+json",
    )


def _unauthenticated() -> web.Response:
    return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
