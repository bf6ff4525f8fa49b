"""A fake Stability AI v2beta Stable Image API (aiohttp) that answers the way api.stability.ai does.

Routes (multipart/form-data only, `authorization: Bearer <key>`, else 401 `unauthorized`):

- `POST /v2beta/stable-image/generate/{core,ultra,sd3}`: with `accept: image/*` the raw image bytes
  and headers `finish-reason` and `seed`; with `accept: application/json` the JSON
  `{"image": <base64>, "finish_reason", "seed"}`. Fields are checked as the real API checks them
  (prompt, aspect_ratio, output_format per route, seed range, sd3's model and mode, image + strength
  for image-to-image); refusals have the real body shape `{"id", "name", "errors": [...]}`.
- `POST /v2beta/stable-image/upscale/creative`: 200 `{"id": <64 hex>}`.
- `GET /v2beta/results/{id}`: 202 `{"id", "status": "in-progress"}` for the first `result_polls`
  looks, then 200 with the image (as above); 404 `not_found` for an unknown id.

Faults are scripted by `plan`, a function from the 0-based index of a POST to a fault name or None:
`rate_limit` (429), `server_error` (500), `content_moderation` (403), `payload_too_large` (413),
`invalid_language` (422), `bad_request` (400), `unauthorized` (401), `content_filtered` (200 with
`finish-reason: CONTENT_FILTERED`), `async` (200 `{"id"}`: the generation finishes at /v2beta/results).
"""

from __future__ import annotations

import base64
import io
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web
from PIL import Image, ImageDraw

from ._server import FakeServer

ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")
OUTPUT_FORMATS = {"core": ("png", "jpeg", "webp"), "ultra": ("png", "jpeg", "webp"), "sd3": ("png", "jpeg")}
SD3_MODELS = ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium", "sd3.5-flash")
MAX_SEED = 4294967294

FAULTS: dict[str, tuple[int, str, str]] = {
    "rate_limit": (
        429,
        "rate_limit_exceeded",
        "You have exceeded the rate limit of 150 requests within a 10 second period.",
    ),
    "server_error": (500, "internal_error", "An unexpected server error has occurred, please try again later."),
    "content_moderation": (
        403,
        "content_moderation",
        "Your request was flagged by our content moderation system, as a result your request was denied.",
    ),
    "payload_too_large": (413, "payload_too_large", "body: payloads cannot be larger than 10MiB in size"),
    "invalid_language": (422, "invalid_language", "English is the only supported language for this service."),
    "bad_request": (400, "bad_request", "prompt: cannot be empty"),
    "unauthorized": (401, "unauthorized", "authorization: invalid or missing header value"),
}

Plan = Callable[[int], str | None]


def make_image(width: int, height: int, fmt: str, label: str) -> bytes:
    """Real image bytes: a coloured field with a diagonal, in png, jpeg or webp."""
    img = Image.new("RGB", (width, height), (40 + len(label) % 200, 120, 200))
    ImageDraw.Draw(img).line((0, 0, width, height), fill=(255, 255, 255), width=3)
    out = io.BytesIO()
    img.save(out, format={"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt])
    return out.getvalue()


def size_for(ratio: str | None, long_side: int = 96) -> tuple[int, int]:
    w, h = (int(x) for x in (ratio or "1:1").split(":"))
    if w >= h:
        return long_side, max(8, round(long_side * h / w))
    return max(8, round(long_side * w / h)), long_side


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)  # field name → bytes received


@dataclass
class _Result:
    image: bytes
    content_type: str
    seed: int
    finish_reason: str = "SUCCESS"
    looks: int = 0


class FakeStability(FakeServer):
    """`async with FakeStability() as fake:` serves on 127.0.0.1 at `fake.base_url`."""

    client_max_size = 10 * 1024 * 1024

    def __init__(self, *, api_key: str = "sk-test-stability-0123456789abcdef", result_polls: int = 2) -> None:
        super().__init__()
        self.api_key = api_key
        self.result_polls = result_polls
        self.plan: Plan = lambda _i: None
        self.requests: list[RecordedRequest] = []
        self.counts: Counter[str] = Counter()
        self.results: dict[str, _Result] = {}
        self.served: list[_Result] = []  # every image answered, in order
        self.base_url = ""
        self._posts = 0

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v2beta/stable-image/generate/{route}", self._generate)
        app.router.add_post("/v2beta/stable-image/upscale/creative", self._upscale)
        app.router.add_get("/v2beta/results/{id}", self._result)

    def _started(self, origin: str) -> str:
        self.base_url = origin
        return origin

    # -- routes ------------------------------------------------------------------------------------

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        route = request.match_info["route"]
        if route not in OUTPUT_FORMATS:
            return _error(404, "not_found", f"{request.path}: no such route")
        recorded, refusal = await self._receive(request)
        if refusal is not None:
            return refusal
        fields, files = recorded.fields, recorded.files
        problems = self._check_common(fields, OUTPUT_FORMATS[route])
        image_to_image = "image" in files
        if route == "sd3":
            if fields.get("model", "sd3.5-large") not in SD3_MODELS:
                problems.append(f"model: must be one of {', '.join(SD3_MODELS)}")
            mode = fields.get("mode", "text-to-image")
            if mode not in ("text-to-image", "image-to-image"):
                problems.append("mode: must be one of text-to-image, image-to-image")
            if (mode == "image-to-image") != image_to_image:
                problems.append("image: required in image-to-image mode and refused in text-to-image mode")
        elif route == "core" and image_to_image:
            problems.append("image: not accepted by this endpoint")
        if image_to_image and "strength" not in fields:
            problems.append("strength: required when an image is provided")
        if image_to_image and "aspect_ratio" in fields:
            problems.append("aspect_ratio: not accepted when an image is provided")
        if problems:
            return _error(400, "bad_request", *problems)
        fault = self._fault()
        if fault in FAULTS:
            return fault_response(fault)
        result = self._make(fields, route)
        if fault == "content_filtered":
            result.finish_reason = "CONTENT_FILTERED"
        if fault == "async":
            result_id = secrets.token_hex(32)
            self.results[result_id] = result
            return web.json_response({"id": result_id})
        self.served.append(result)
        return _image_answer(request, result)

    async def _upscale(self, request: web.Request) -> web.StreamResponse:
        recorded, refusal = await self._receive(request)
        if refusal is not None:
            return refusal
        problems = self._check_common(recorded.fields, ("png", "jpeg", "webp"))
        if "image" not in recorded.files:
            problems.append("image: required")
        if "aspect_ratio" in recorded.fields:
            problems.append("aspect_ratio: not accepted by this endpoint")
        if problems:
            return _error(400, "bad_request", *problems)
        fault = self._fault()
        if fault in FAULTS:
            return fault_response(fault)
        result_id = secrets.token_hex(32)
        self.results[result_id] = self._make(recorded.fields, "upscale", long_side=192)
        return web.json_response({"id": result_id})

    async def _result(self, request: web.Request) -> web.StreamResponse:
        self.counts[f"GET {request.path}"] += 1
        self.requests.append(RecordedRequest("GET", request.path, dict(request.headers)))
        if not _authorized(request, self.api_key):
            return _error(401, "unauthorized", "authorization: invalid or missing header value")
        result = self.results.get(request.match_info["id"])
        if result is None:
            return _error(404, "not_found", f"id: {request.match_info['id']} was not found")
        result.looks += 1
        if result.looks <= self.result_polls:
            return web.json_response({"id": request.match_info["id"], "status": "in-progress"}, status=202)
        self.served.append(result)
        return _image_answer(request, result)

    # -- helpers -----------------------------------------------------------------------------------

    async def _receive(self, request: web.Request) -> tuple[RecordedRequest, web.Response | None]:
        self.counts[f"POST {request.path}"] += 1
        fields: dict[str, str] = {}
        files: dict[str, int] = {}
        refusal: web.Response | None = None
        if not _authorized(request, self.api_key):
            refusal = _error(401, "unauthorized", "authorization: invalid or missing header value")
        elif not request.content_type.startswith("multipart/form-data"):
            refusal = _error(400, "bad_request", "content-type: must be multipart/form-data")
        else:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                assert isinstance(part, BodyPartReader)
                data = await part.read()
                if part.filename is not None:
                    files[part.name or ""] = len(data)
                else:
                    fields[part.name or ""] = data.decode()
        recorded = RecordedRequest("POST", request.path, dict(request.headers), fields, files)
        self.requests.append(recorded)
        return recorded, refusal

    def _check_common(self, fields: dict[str, str], formats: tuple[str, ...]) -> list[str]:
        problems = []
        if not fields.get("prompt", "").strip():
            problems.append("prompt: cannot be empty")
        if "aspect_ratio" in fields and fields["aspect_ratio"] not in ASPECT_RATIOS:
            problems.append(f"aspect_ratio: must be one of {', '.join(ASPECT_RATIOS)}")
        if fields.get("output_format", "png") not in formats:
            problems.append(f"output_format: must be one of {', '.join(formats)}")
        if "seed" in fields and not (fields["seed"].isdigit() and int(fields["seed"]) <= MAX_SEED):
            problems.append(f"seed: must be a number from 0 to {MAX_SEED}")
        return problems

    def _fault(self) -> str | None:
        index = self._posts
        self._posts += 1
        return self.plan(index)

    def _make(self, fields: dict[str, str], route: str, long_side: int = 96) -> _Result:
        fmt = fields.get("output_format", "png")
        width, height = size_for(fields.get("aspect_ratio"), long_side)
        seed = int(fields.get("seed", "0")) or secrets.randbelow(MAX_SEED) + 1
        image = make_image(width, height, fmt, f"{route}:{fields.get('prompt', '')}")
        return _Result(image, f"image/{fmt}", seed)

    def add_result(self, prompt: str, *, ready: bool = True) -> str:
        """An asynchronous generation started out of band (e.g. by an earlier attempt); its id."""
        result_id = secrets.token_hex(32)
        result = self._make({"prompt": prompt}, "core")
        if ready:
            result.looks = self.result_polls
        self.results[result_id] = result
        return result_id

    def posts(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST"]


def _authorized(request: web.Request, key: str) -> bool:
    return request.headers.get("authorization") == f"Bearer {key}"


def _error(status: int, name: str, *errors: str) -> web.Response:
    return web.json_response({"id": secrets.token_hex(16), "name": name, "errors": list(errors)}, status=status)


def fault_response(fault: str) -> web.Response:
    status, name, message = FAULTS[fault]
    return _error(status, name, message)


def _image_answer(request: web.Request, result: _Result) -> web.Response:
    accept = request.headers.get("accept", "image/*")
    if accept.startswith("application/json"):
        body: dict[str, Any] = {
            "image": base64.b64encode(result.image).decode(),
            "finish_reason": result.finish_reason,
            "seed": result.seed,
        }
        return web.json_response(body)
    return web.Response(
        body=result.image,
        content_type=result.content_type,
        headers={"finish-reason": result.finish_reason, "seed": str(result.seed)},
    )
