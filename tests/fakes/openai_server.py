"""A fake OpenAI Images API (aiohttp) that answers the way api.openai.com does, for the real `openai` SDK.

Routes: `POST /v1/images/generations` (JSON) and `POST /v1/images/edits` (multipart), with bearer-key
auth, per-model parameter checks worded like the real API's (`Unknown parameter: 'response_format'.`,
`Invalid value: '512x512'. Supported values are: ...`), real PNG/JPEG/WebP bytes of the requested size
made with Pillow, `b64_json` or a signed blob `url` (served by `GET /blob/...`, as Azure blob storage
serves DALL·E results), `revised_prompt` for dall-e-3 and token `usage` for gpt-image-1. Every answer
carries `x-request-id` and the `openai-*` / `x-ratelimit-*` headers.

Faults are scripted by `plan`: a function from the 0-based index of an API request to a fault name (or
None for a normal answer), so tests can make e.g. every call whose index % 10 is in {0, 3, 6} fail:

- `rate_limit`: 429 `rate_limit_exceeded` with `retry-after-ms` and `retry-after`
- `insufficient_quota`: 429 `insufficient_quota` (the account is out of credit; not worth a retry)
- `server_error`: 500 `server_error`
- `content_policy`: 400 `content_policy_violation` (dall-e-3's refusal shape)
- `moderation_blocked`: 400 `moderation_blocked` (gpt-image-1's refusal shape)
- `echo_key`: 401 whose message repeats the caller's key in full, as a misbehaving gateway might
- `slow`: a normal answer after `slow_seconds`, to run into the client's timeout
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web
from PIL import Image, ImageDraw

from ._server import FakeServer

GPT_IMAGE_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
DALL_E_3_SIZES = ("1024x1024", "1792x1024", "1024x1792")
# What each model accepts besides prompt/model/n/size/quality (the real API rejects the rest by name).
GENERATE_PARAMS = {
    "gpt-image-1": {"background", "moderation", "output_compression", "output_format", "quality", "size", "user"},
    "dall-e-3": {"quality", "response_format", "size", "style", "user"},
}
QUALITIES = {"gpt-image-1": ("low", "medium", "high", "auto"), "dall-e-3": ("standard", "hd")}
# gpt-image-1 output tokens by quality and size, as OpenAI's image generation guide documents them
# ("Cost and latency"); "auto" quality answers as medium, "auto" size as 1024x1024.
OUTPUT_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}

CONTENT_POLICY_MESSAGE = (
    "Your request was rejected as a result of our safety system. Your prompt may contain text that is not "
    "allowed by our safety system."
)
MODERATION_MESSAGE = (
    "Your request was rejected by the safety system. If you believe this is an error, contact us at "
    "help.openai.com and include the request ID {request_id}."
)

Plan = Callable[[int], str | None]


def make_image(width: int, height: int, text: str, fmt: str = "png") -> bytes:
    """Real image bytes of the given size and format, coloured by `text` so different prompts differ."""
    digest = hashlib.sha256(text.encode()).digest()
    img = Image.new("RGB", (width, height), tuple(digest[:3]))
    ImageDraw.Draw(img).rectangle((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=tuple(digest[3:6]))
    out = io.BytesIO()
    img.save(
        out,
        format={"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt],
        **({"compress_level": 1} if fmt == "png" else {}),
    )
    return out.getvalue()


@dataclass(frozen=True)
class RecordedRequest:
    """One API request as the fake saw it (blob downloads are counted apart, in `downloads`)."""

    method: str
    path: str
    headers: dict[str, str]
    json: dict[str, Any] | None = None
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


def _error(
    status: int, message: str, *, type_: str, code: str | None = None, param: str | None = None, **headers: str
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


class FakeOpenAI(FakeServer):
    """The fake server. `start()` returns the base URL to give the SDK (ending in /v1)."""

    client_max_size = 64 * 1024 * 1024

    def __init__(self, *, api_key: str = "sk-test-fake-openai-key-0123456789", retry_after_ms: int = 50) -> None:
        super().__init__()
        self.api_key = api_key
        self.retry_after_ms = retry_after_ms
        self.slow_seconds = 1.5
        self.plan: Plan = lambda _index: None
        self.requests: list[RecordedRequest] = []
        self.faults: Counter[str] = Counter()
        self.downloads = 0
        self._blobs: dict[str, tuple[bytes, str, str]] = {}
        self.base_url = ""

    # -- lifecycle ------------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self._generations)
        app.router.add_post("/v1/images/edits", self._edits)
        app.router.add_get("/blob/{name}", self._blob)

    def _started(self, origin: str) -> str:
        self.base_url = f"{origin}/v1"
        return self.base_url

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    # -- routes ---------------------------------------------------------------------------------

    async def _generations(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return self._answer(
                _error(400, "We could not parse the JSON body of your request.", type_="invalid_request_error")
            )
        recorded = RecordedRequest(request.method, request.path, dict(request.headers), json=body)
        return await self._handle(request, recorded, dict(body), edit=False)

    async def _edits(self, request: web.Request) -> web.StreamResponse:
        form: dict[str, str] = {}
        files: dict[str, bytes] = {}
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            if part.filename is not None:
                files[part.name] = bytes(await part.read())
            else:
                form[part.name] = await part.text()
        recorded = RecordedRequest(request.method, request.path, dict(request.headers), form=form, files=files)
        return await self._handle(request, recorded, dict(form), edit=True)

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        blob = self._blobs.get(request.match_info["name"])
        if blob is None or request.query.get("sig") != blob[2]:
            return web.Response(status=403, text="AuthenticationFailed: Server failed to authenticate the request.")
        self.downloads += 1
        return web.Response(body=blob[0], content_type=blob[1])

    # -- the API --------------------------------------------------------------------------------

    async def _handle(
        self, request: web.Request, recorded: RecordedRequest, params: dict[str, Any], *, edit: bool
    ) -> web.StreamResponse:
        index = len(self.requests)
        self.requests.append(recorded)
        request_id = f"req_{secrets.token_hex(16)}"
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            masked = f"{given[:3]}{'*' * 10}{given[-4:]}" if len(given) > 8 else "***"
            return self._answer(
                _error(
                    401,
                    f"Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys.",
                    type_="invalid_request_error",
                    code="invalid_api_key",
                ),
                request_id,
            )
        fault = self.plan(index)
        if fault == "slow":
            self.faults[fault] += 1
            await asyncio.sleep(self.slow_seconds)
        elif fault is not None:
            self.faults[fault] += 1
            return self._answer(self._fault(fault, params.get("model"), request_id), request_id)
        return self._answer(await self._image(request, params, edit=edit, request_id=request_id), request_id)

    def _fault(self, fault: str, model: Any, request_id: str) -> web.Response:
        if fault == "rate_limit":
            return _error(
                429,
                f"Rate limit reached for {model} in organization org-fake on images per minute (IPM): Limit 5, Used 5, "
                "Requested 1. Please try again in 12s. Visit https://platform.openai.com/account/rate-limits to learn more.",
                type_="requests",
                code="rate_limit_exceeded",
                **{"retry-after-ms": str(self.retry_after_ms), "retry-after": str(max(1, self.retry_after_ms // 1000))},
            )
        if fault == "insufficient_quota":
            return _error(
                429,
                "You exceeded your current quota, please check your plan and billing details. For more information on "
                "this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
                type_="insufficient_quota",
                code="insufficient_quota",
            )
        if fault == "server_error":
            return _error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                type_="server_error",
            )
        if fault == "content_policy":
            return _error(400, CONTENT_POLICY_MESSAGE, type_="invalid_request_error", code="content_policy_violation")
        if fault == "moderation_blocked":
            return _error(
                400,
                MODERATION_MESSAGE.format(request_id=request_id),
                type_="image_generation_user_error",
                code="moderation_blocked",
            )
        if fault == "echo_key":
            return _error(
                401,
                f"Incorrect API key provided: {self.api_key}. You can find your API key at https://platform.openai.com/account/api-keys.",
                type_="invalid_request_error",
                code="invalid_api_key",
            )
        raise AssertionError(f"unknown fault {fault!r}")

    async def _image(
        self, request: web.Request, params: dict[str, Any], *, edit: bool, request_id: str
    ) -> web.Response:
        model = params.pop("model", "dall-e-2")
        prompt = params.pop("prompt", None)
        params.pop("n", None)
        if model not in GENERATE_PARAMS:
            return _error(
                404 if not edit else 400,
                f"The model '{model}' does not exist or you do not have access to it.",
                type_="invalid_request_error",
                code="model_not_found",
            )
        if not prompt:
            return _error(
                400,
                "Missing required parameter: 'prompt'.",
                type_="invalid_request_error",
                code="missing_required_parameter",
                param="prompt",
            )
        if edit and model != "gpt-image-1":
            return _error(
                400,
                f"Invalid value: '{model}'. Value must be 'dall-e-2' or a GPT image model.",
                type_="invalid_request_error",
                code="invalid_value",
                param="model",
            )
        allowed = GENERATE_PARAMS[model] - ({"moderation", "style"} if edit else set())
        for name in params:
            if name not in allowed:
                return _error(
                    400,
                    f"Unknown parameter: '{name}'.",
                    type_="invalid_request_error",
                    code="unknown_parameter",
                    param=name,
                )
        sizes = GPT_IMAGE_SIZES if model == "gpt-image-1" else DALL_E_3_SIZES
        size = params.get("size", "auto" if model == "gpt-image-1" else "1024x1024")
        if size not in sizes:
            supported = ", ".join(f"'{s}'" for s in sizes[:-1]) + f", and '{sizes[-1]}'"
            return _error(
                400,
                f"Invalid value: '{size}'. Supported values are: {supported}.",
                type_="invalid_request_error",
                code="invalid_value",
                param="size",
            )
        quality = params.get("quality", "auto" if model == "gpt-image-1" else "standard")
        if quality not in QUALITIES[model]:
            supported = ", ".join(f"'{q}'" for q in QUALITIES[model])
            return _error(
                400,
                f"Invalid value: '{quality}'. Supported values are: {supported}.",
                type_="invalid_request_error",
                code="invalid_value",
                param="quality",
            )
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        fmt = params.get("output_format", "png")
        data = await asyncio.to_thread(make_image, width, height, f"{model}:{prompt}", fmt)
        headers = {"openai-processing-ms": "1234", "openai-version": "2020-10-01", "openai-organization": "org-fake"}
        created = int(time.time())
        if model == "gpt-image-1":
            text_tokens = max(1, len(prompt.split()))
            image_tokens = 323 if edit else 0
            output_tokens = OUTPUT_TOKENS["medium" if quality == "auto" else quality][f"{width}x{height}"]
            body: dict[str, Any] = {
                "created": created,
                "background": "transparent" if params.get("background") == "transparent" else "opaque",
                "data": [{"b64_json": base64.b64encode(data).decode()}],
                "output_format": fmt,
                "quality": "medium" if quality == "auto" else quality,
                "size": f"{width}x{height}",
                "usage": {
                    "input_tokens": text_tokens + image_tokens,
                    "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
                    "output_tokens": output_tokens,
                    "total_tokens": text_tokens + image_tokens + output_tokens,
                },
            }
            return web.json_response(body, headers=headers)
        revised = f"A detailed, vivid rendering of: {prompt}"
        if params.get("response_format", "url") == "b64_json":
            item = {"b64_json": base64.b64encode(data).decode(), "revised_prompt": revised}
        else:
            name = f"img-{secrets.token_hex(8)}.png"
            sig = secrets.token_urlsafe(16)
            self._blobs[name] = (data, "image/png", sig)
            host = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
            item = {
                "url": f"{host}/blob/{name}?st=2025-01-01T00%3A00%3A00Z&se=2099-01-01T00%3A00%3A00Z&sp=r&sig={sig}",
                "revised_prompt": revised,
            }
        return web.json_response({"created": created, "data": [item]}, headers=headers)

    def _answer(self, response: web.Response, request_id: str | None = None) -> web.Response:
        response.headers["x-request-id"] = request_id or f"req_{secrets.token_hex(16)}"
        response.headers.setdefault("x-ratelimit-limit-requests", "50")
        response.headers.setdefault("x-ratelimit-remaining-requests", "49")
        response.headers.setdefault("x-ratelimit-reset-requests", "1.2s")
        return response
