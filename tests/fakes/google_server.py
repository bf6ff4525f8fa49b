"""A fake Google generative AI endpoint (aiohttp): `:generateContent` for Imagen models on Vertex AI and for
Gemini image models on Vertex AI and on the Gemini API (API key), for the real `google-genai` SDK.

Routes (any API version prefix, as the SDK picks `v1beta1` for Vertex and `v1` for the Gemini API):

- `POST /{v}/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`
- `POST /{v}/models/{model}:generateContent` with `x-goog-api-key`

Any other method (`:predict`, which the deprecated `generate_images` calls, included) is 404 `NOT_FOUND`,
and so are Imagen models on the Gemini API, which shut them down. Vertex calls need `Authorization:
Bearer <token>` (401 `UNAUTHENTICATED` otherwise); Gemini API calls need the key (400 `API_KEY_INVALID`
otherwise), as Google answers. A `generationConfig` or `imageConfig` field the API does not define is
refused as Google's proto JSON parser refuses it (400 `Invalid JSON payload received. Unknown name ...`,
with a `google.rpc.BadRequest` detail). Errors use Google's JSON error shape `{"error": {"code",
"message", "status", "details"}}`. Images are real PNGs (or JPEGs, for Imagen's `imageOutputOptions`)
of the size the aspect ratio implies (twice as wide and tall for Imagen's `imageSize` 2K), base64 in a
candidate's `inlineData.data`. Imagen answers with the image alone and takes IMAGE as its only response
modality; Gemini adds a text part.

Faults are scripted by `plan`, a function from the 0-based index of an API request to a fault name:

- `rate_limit`: 429 `RESOURCE_EXHAUSTED` as each API sends it, with no `Retry-After` header: on the Gemini
  API with `google.rpc.QuotaFailure`, `Help` and `RetryInfo` details (`retryDelay` is `retry_after`
  seconds); on Vertex AI a quota message and no details, so nothing says how long to wait
- `rate_limit_retry_after`: 429 `RESOURCE_EXHAUSTED` with a `Retry-After` header (`retry_after` seconds) and
  no details, as a gateway in front of the API may answer
- `server_error`: 500 `INTERNAL`; `unavailable`: 503 `UNAVAILABLE` ("The model is overloaded")
- `content_policy`: the 400 `INVALID_ARGUMENT` refusal "... violate Google's Responsible AI practices"
- `prompt_blocked`: a 200 answer with `promptFeedback.blockReason` and no candidates
- `image_safety`: a 200 answer whose candidate finished with `IMAGE_SAFETY` and no image
- `echo_key`: 400 whose message repeats the caller's API key in full, as a misbehaving proxy might
- `slow`: a normal answer after `slow_seconds`, to run into the client's timeout
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import re
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from PIL import Image, ImageDraw

from ._server import FakeServer

IMAGEN_SIZES = {"1:1": (1024, 1024), "3:4": (896, 1280), "4:3": (1280, 896), "9:16": (768, 1408), "16:9": (1408, 768)}
GEMINI_SIZES = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}
RAI_REFUSAL = (
    "Image generation failed with the following error: The prompt could not be submitted. This prompt contains "
    "sensitive words that violate Google's Responsible AI practices. Try rephrasing the prompt. If you think this "
    "was an error, send feedback. Support codes: 42876398"
)
_VERTEX = re.compile(
    r"^/([^/]+)/projects/([^/]+)/locations/([^/]+)/publishers/google/models/([^/:]+):(generateContent)$"
)
_GEMINI_API = re.compile(r"^/([^/]+)/models/([^/:]+):(generateContent)$")

# The fields of GenerationConfig and ImageConfig, as each API defines them (what a proto JSON parser accepts).
GENERATION_CONFIG_FIELDS = frozenset(
    {
        "temperature",
        "topP",
        "topK",
        "candidateCount",
        "maxOutputTokens",
        "stopSequences",
        "responseLogprobs",
        "logprobs",
        "presencePenalty",
        "frequencyPenalty",
        "seed",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "responseModalities",
        "mediaResolution",
        "speechConfig",
        "thinkingConfig",
        "imageConfig",
    }
)
IMAGE_CONFIG_FIELDS = {
    "vertex": frozenset({"aspectRatio", "imageSize", "personGeneration", "prominentPeople", "imageOutputOptions"}),
    "gemini_api": frozenset({"aspectRatio", "imageSize"}),
}
PERSON_GENERATION = ("ALLOW_ALL", "ALLOW_ADULT", "ALLOW_NONE")
IMAGE_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG"}

Plan = Callable[[int], str | None]


def make_png(width: int, height: int, text: str, fmt: str = "PNG") -> bytes:
    """A real PNG (or `fmt`) of the given size, coloured by `text` so different prompts differ."""
    digest = hashlib.sha256(text.encode()).digest()
    img = Image.new("RGB", (width, height), tuple(digest[:3]))
    ImageDraw.Draw(img).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=tuple(digest[3:6]))
    out = io.BytesIO()
    img.save(out, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
    return out.getvalue()


def snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def pick(message: dict[str, Any], name: str, default: Any = None) -> Any:
    """A proto3 JSON field, which parsers accept by its lowerCamelCase or its original snake_case name."""
    return message.get(name, message.get(snake(name), default))


def unknown_field(message: dict[str, Any], fields: frozenset[str]) -> str | None:
    """The first key of `message` that names none of `fields` (in either spelling), as a parser sees it."""
    known = fields | {snake(f) for f in fields}
    return next((key for key in message if key not in known), None)


def invalid_payload(name: str, where: str) -> web.Response:
    """Google's answer to a JSON request body naming a field its message type does not have."""
    message = f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': Cannot find field."
    return google_error(
        400,
        "INVALID_ARGUMENT",
        message,
        [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": where, "description": message}],
            }
        ],
    )


def decode_bytes(text: str) -> bytes:
    """A proto3 JSON `bytes` field: standard or URL-safe base64, padded or not (the SDK sends URL-safe)."""
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: dict[str, Any]
    mode: str  # "vertex" or "gemini_api"
    model: str
    method_name: str  # "generateContent"


def google_error(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None, **headers: str
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=code, headers=headers)


class FakeGoogle(FakeServer):
    """The fake server. `start()` returns the base URL to give the SDK (`http_options.base_url`)."""

    client_max_size = 64 * 1024 * 1024

    def __init__(
        self,
        *,
        api_key: str = "fake-gemini-api-key-0123456789",
        access_token: str = "fake-vertex-access-token",
        retry_after: int = 1,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.access_token = access_token
        self.retry_after = retry_after
        self.slow_seconds = 1.5
        self.plan: Plan = lambda _index: None
        self.requests: list[RecordedRequest] = []
        self.faults: Counter[str] = Counter()
        self.base_url = ""

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.*}", self._route)

    def _started(self, origin: str) -> str:
        self.base_url = f"{origin}/"
        return self.base_url

    # -- routing and auth -----------------------------------------------------------------------

    async def _route(self, request: web.Request) -> web.Response:
        path = request.path
        if m := _VERTEX.match(path):
            mode, version, model, method_name = "vertex", m.group(1), m.group(4), m.group(5)
        elif m := _GEMINI_API.match(path):
            mode, version, model, method_name = "gemini_api", m.group(1), m.group(2), m.group(3)
        else:
            return google_error(404, "NOT_FOUND", f"Method not found: {path}")
        try:
            body = await request.json()
        except ValueError:
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        index = len(self.requests)
        self.requests.append(
            RecordedRequest(request.method, path, dict(request.headers), body, mode, model, method_name)
        )
        if mode == "vertex" and request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
                "valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            )
        if mode == "gemini_api" and request.headers.get("x-goog-api-key") != self.api_key:
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
        fault = self.plan(index)
        if fault == "slow":
            self.faults[fault] += 1
            await asyncio.sleep(self.slow_seconds)
        elif fault is not None:
            self.faults[fault] += 1
            return self._fault(fault, mode, model)
        config = pick(body, "generationConfig") or {}
        if (name := unknown_field(config, GENERATION_CONFIG_FIELDS)) is not None:
            return invalid_payload(name, "generation_config")
        image_config = pick(config, "imageConfig") or {}
        if (name := unknown_field(image_config, IMAGE_CONFIG_FIELDS[mode])) is not None:
            return invalid_payload(name, "generation_config.image_config")
        if model.startswith("imagen-"):
            if mode == "gemini_api":
                return google_error(
                    404,
                    "NOT_FOUND",
                    f"models/{model} is not found for API version {version}, or is not supported for generateContent. "
                    "Call ListModels to see the list of available models and their supported methods.",
                )
            return await self._imagen(model, body)
        return await self._generate_content(model, body)

    def _fault(self, fault: str, mode: str, model: str) -> web.Response:
        if fault == "rate_limit" and mode == "vertex":
            return google_error(
                429,
                "RESOURCE_EXHAUSTED",
                f"Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model with base "
                f"model: {model}. Please submit a quota increase request. https://cloud.google.com/vertex-ai/docs/generative-ai/quotas-genai.",
            )
        if fault == "rate_limit":
            metric = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
            message = (
                "You exceeded your current quota, please check your plan and billing details. For more information "
                "on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n"
                f"* Quota exceeded for metric: {metric}, limit: 10, model: {model}\n"
                f"Please retry in {self.retry_after}.{secrets.randbelow(10**9):09d}s."
            )
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": metric,
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                            "quotaDimensions": {"location": "global", "model": model},
                            "quotaValue": "10",
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Learn more about Gemini API quotas",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                        }
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{self.retry_after}s"},
            ]
            return google_error(429, "RESOURCE_EXHAUSTED", message, details)
        if fault == "rate_limit_retry_after":
            return google_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource exhausted. Please try again later.",
                **{"Retry-After": str(self.retry_after)},
            )
        if fault == "server_error":
            return google_error(500, "INTERNAL", "Internal error encountered.")
        if fault == "unavailable":
            return google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
        if fault == "content_policy":
            return google_error(400, "INVALID_ARGUMENT", RAI_REFUSAL)
        if fault == "prompt_blocked":
            return web.json_response(
                {
                    "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                    "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
                    "modelVersion": model,
                    "responseId": secrets.token_urlsafe(12),
                }
            )
        if fault == "image_safety":
            return web.json_response(
                {
                    "candidates": [
                        {
                            "content": {"role": "model"},
                            "finishReason": "IMAGE_SAFETY",
                            "finishMessage": "Unable to show the generated image. The image was filtered out because it violated Google's Generative AI Prohibited Use policy.",
                            "index": 0,
                        }
                    ],
                    "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
                    "modelVersion": model,
                    "responseId": secrets.token_urlsafe(12),
                }
            )
        if fault == "echo_key":
            return google_error(
                400, "INVALID_ARGUMENT", f"API key not valid: {self.api_key}. Please pass a valid API key."
            )
        raise AssertionError(f"unknown fault {fault!r}")

    # -- Imagen ---------------------------------------------------------------------------------

    async def _imagen(self, model: str, body: dict[str, Any]) -> web.Response:
        texts = [
            part["text"] for content in body.get("contents", []) for part in content.get("parts", []) if "text" in part
        ]
        if not texts:
            return google_error(
                400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified\n"
            )
        config = pick(body, "generationConfig") or {}
        modalities = [m.upper() for m in pick(config, "responseModalities", ["TEXT"])]
        if modalities != ["IMAGE"]:
            others = ", ".join(m.lower() for m in modalities if m != "IMAGE")
            return google_error(
                400, "INVALID_ARGUMENT", f"Model does not support the requested response modalities: {others}"
            )
        image_config = pick(config, "imageConfig") or {}
        ratio = pick(image_config, "aspectRatio", "1:1")
        if ratio not in IMAGEN_SIZES:
            return google_error(
                400, "INVALID_ARGUMENT", f"Unsupported aspect ratio: {ratio}. Supported: 1:1, 3:4, 4:3, 9:16, 16:9."
            )
        person = pick(image_config, "personGeneration")
        if person is not None and person not in PERSON_GENERATION:
            return google_error(
                400,
                "INVALID_ARGUMENT",
                f"Invalid value at 'generation_config.image_config.person_generation': {person}",
            )
        mime = pick(pick(image_config, "imageOutputOptions") or {}, "mimeType", "image/png")
        if mime not in IMAGE_FORMATS:
            return google_error(400, "INVALID_ARGUMENT", f"Unsupported output mime type: {mime}")
        width, height = IMAGEN_SIZES[ratio]
        if pick(image_config, "imageSize") == "2K":
            width, height = width * 2, height * 2
        prompt = " ".join(texts)
        data = await asyncio.to_thread(
            make_png, width, height, f"{model}:{prompt}:{pick(config, 'seed')}", IMAGE_FORMATS[mime]
        )
        prompt_tokens = len(prompt.split())
        return web.json_response(
            {
                "candidates": [
                    {
                        "content": {
                            "role": "model",
                            "parts": [{"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode()}}],
                        },
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
                "modelVersion": model,
                "responseId": secrets.token_urlsafe(12),
            }
        )

    # -- Gemini ---------------------------------------------------------------------------------

    async def _generate_content(self, model: str, body: dict[str, Any]) -> web.Response:
        texts: list[str] = []
        images: list[bytes] = []
        for content in body.get("contents", []):
            for part in content.get("parts", []):
                if "text" in part:
                    texts.append(part["text"])
                elif pick(part, "inlineData") is not None:
                    images.append(decode_bytes(pick(part, "inlineData")["data"]))
        if not texts:
            return google_error(
                400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified\n"
            )
        config = pick(body, "generationConfig") or {}
        modalities = [m.upper() for m in pick(config, "responseModalities", ["TEXT"])]
        ratio = pick(pick(config, "imageConfig") or {}, "aspectRatio", "1:1")
        if ratio not in GEMINI_SIZES:
            return google_error(400, "INVALID_ARGUMENT", f"Unsupported aspect ratio: {ratio}")
        parts: list[dict[str, Any]] = [{"text": "Here is the image you asked for."}]
        out_tokens = 12
        if "IMAGE" in modalities and model.startswith("gemini-") and "image" in model:
            width, height = GEMINI_SIZES[ratio]
            seed_text = (
                f"{model}:{' '.join(texts)}:{pick(config, 'seed')}:{hashlib.sha256(b''.join(images)).hexdigest()}"
            )
            data = await asyncio.to_thread(make_png, width, height, seed_text)
            parts.append({"inlineData": {"mimeType": "image/png", "data": base64.b64encode(data).decode()}})
            out_tokens += 1290
        prompt_tokens = sum(len(t.split()) for t in texts) + 258 * len(images)
        return web.json_response(
            {
                "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {
                    "promptTokenCount": prompt_tokens,
                    "candidatesTokenCount": out_tokens,
                    "totalTokenCount": prompt_tokens + out_tokens,
                },
                "modelVersion": model,
                "responseId": secrets.token_urlsafe(12),
            }
        )
