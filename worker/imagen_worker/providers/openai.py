"""OpenAI images (gpt-image-1, dall-e-3) through the official `openai` SDK, every SDK error classified."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import httpx
import openai

from ..errors import (
    ImageDataError,
    JobError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    SpecError,
)
from ..images import MAX_BYTES, guess_content_type
from ..spec import ImagePromptSpec
from . import _http
from .base import Capabilities, GeneratedImage, GenerationRequest, Provider, ProviderResult

if TYPE_CHECKING:
    from ..queue import JobContext

GPT_IMAGE = "gpt-image-1"
DALL_E_3 = "dall-e-3"

# spec.options each model takes, with the values allowed.
OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    GPT_IMAGE: {"output_format": ("png", "jpeg", "webp"), "background": ("transparent", "opaque", "auto")},
    DALL_E_3: {"style": ("vivid", "natural"), "response_format": ("b64_json", "url")},
}
# spec.aspect_ratio → the model's size with exactly that ratio.
ASPECT_SIZES: dict[str, dict[str, str]] = {
    GPT_IMAGE: {"1:1": "1024x1024", "3:2": "1536x1024", "2:3": "1024x1536"},
    DALL_E_3: {"1:1": "1024x1024", "7:4": "1792x1024", "4:7": "1024x1792"},
}
MAX_PROMPT = {GPT_IMAGE: 32000, DALL_E_3: 4000}

# gpt-image-1 bills tokens, USD per million: with `usage` in the answer a job's cost is exact, not a table's
# estimate. (dall-e-3 bills per image; its price comes from the pricing table.)
GPT_IMAGE_TOKEN_PRICES = {"text_input": Decimal("5.00"), "image_input": Decimal("10.00"), "output": Decimal("40.00")}

CONTENT_POLICY_CODES = ("content_policy_violation", "moderation_blocked")


class OpenAIProvider(Provider):
    """`provider="openai"`. The key comes from OPENAI_API_KEY, the endpoint from OPENAI_BASE_URL (or the
    arguments); a missing key fails the job with a message naming OPENAI_API_KEY, not the worker."""

    name = "openai"
    models: ClassVar[dict[str, Capabilities]] = {
        GPT_IMAGE: Capabilities(
            sizes=tuple(ASPECT_SIZES[GPT_IMAGE].values()),
            aspect_ratios=tuple(ASPECT_SIZES[GPT_IMAGE]),
            qualities=("low", "medium", "high", "auto"),
            edit=True,
            max_side=1536,
            default_size=None,  # unset means "auto": the model picks one of its sizes
            price_usd=Decimal("0.042"),  # one medium 1024x1024 image; the exact cost comes from `usage`
        ),
        DALL_E_3: Capabilities(
            sizes=tuple(ASPECT_SIZES[DALL_E_3].values()),
            aspect_ratios=tuple(ASPECT_SIZES[DALL_E_3]),
            qualities=("standard", "hd"),
            max_side=1792,
            default_size="1024x1024",
            price_usd=Decimal("0.040"),  # standard 1024x1024
            max_prompt_chars=4000,
        ),
    }

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        max_retries: int = 2,
        timeout: float = 180.0,
    ) -> None:
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or None
        self._base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self._max_retries = max_retries
        self._timeout = timeout
        self._sdk: openai.AsyncOpenAI | None = None

    # -- validation -----------------------------------------------------------------------------

    def check(self, spec: ImagePromptSpec, model: str) -> None:
        self.capabilities(model)  # an unknown model: nothing else can be checked
        problems: list[str] = []
        try:
            super().check(spec, model)
        except SpecError as exc:
            problems.append(str(exc))
        allowed = OPTIONS[model]
        for key, value in spec.options.items():
            if key not in allowed:
                problems.append(
                    f"spec.options.{key}: not an option of {self.name}/{model}; the options are {', '.join(allowed)}"
                )
            elif value not in allowed[key]:
                problems.append(
                    f"spec.options.{key}: {value!r} is not offered by {self.name}/{model}; use one of {', '.join(allowed[key])}"
                )
        if spec.options.get("background") == "transparent" and spec.options.get("output_format") == "jpeg":
            problems.append("spec.options.background: transparent needs output_format png or webp (jpeg has no alpha)")
        if len(spec.prompt) > MAX_PROMPT[model]:
            problems.append(f"spec.prompt: {self.name}/{model} takes at most {MAX_PROMPT[model]} characters")
        if problems:
            raise SpecError("; ".join(problems))

    # -- generation -----------------------------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        return None if self._api_key else "OPENAI_API_KEY is not set"

    async def generate(self, request: GenerationRequest, ctx: JobContext) -> ProviderResult:
        model = request.model
        spec = request.spec
        params: dict[str, Any] = {"model": model, "prompt": request.prompt}
        size = self._size(request)
        if size is not None:
            params["size"] = size
        if spec.quality is not None:
            params["quality"] = spec.quality
        for key in OPTIONS[model]:
            if key in spec.options:
                params[key] = spec.options[key]
        if model == DALL_E_3:
            # Ask for the bytes in the answer unless the spec wants the URL route: one round trip, no expiring link.
            params.setdefault("response_format", "b64_json")
        client = self._client()
        try:
            if request.previous_image is not None:
                image_file = (
                    f"previous.{_extension(request.previous_image)}",
                    request.previous_image,
                    guess_content_type(request.previous_image, "application/octet-stream"),
                )
                response = await client.images.edit(image=image_file, **params)
            else:
                response = await client.images.generate(**params)
        except openai.OpenAIError as exc:
            raise self._classify(exc, model) from exc
        item = response.data[0] if response.data else None
        if item is None:
            raise ProviderUnavailable(f"{self.name}/{model} answered without an image")
        if item.revised_prompt:
            await ctx.event("log", {"revised_prompt": item.revised_prompt[:4000]})
        if item.b64_json:
            try:
                data = base64.b64decode(item.b64_json, validate=True)
            except (binascii.Error, ValueError):
                raise ProviderUnavailable(f"{self.name}/{model} answered with malformed base64 image data") from None
        elif item.url:
            data = await self._download(item.url, model)
        else:
            raise ProviderUnavailable(f"{self.name}/{model} answered without image data or a URL")
        usage = _usage(response.usage)
        return ProviderResult(GeneratedImage(data), usage=usage, cost_usd=_token_cost(usage))

    def _size(self, request: GenerationRequest) -> str | None:
        if request.width and request.height:
            return f"{request.width}x{request.height}"
        if request.spec.aspect_ratio is not None:
            return ASPECT_SIZES[request.model].get(request.spec.aspect_ratio)
        return None

    def _client(self) -> openai.AsyncOpenAI:
        if self._sdk is None:
            if not self._api_key:
                raise ProviderRejected(
                    "openai: no API key; set OPENAI_API_KEY in the worker's environment (or pass api_key) and retry"
                )
            self._sdk = openai.AsyncOpenAI(
                api_key=self._api_key, base_url=self._base_url, max_retries=self._max_retries, timeout=self._timeout
            )
        return self._sdk

    async def aclose(self) -> None:
        """Close the SDK's connection pool."""
        if self._sdk is not None:
            await self._sdk.close()
            self._sdk = None

    async def _download(self, url: str, model: str) -> bytes:
        """Fetch a URL answer at once (the link expires), never echoing its signed query string."""
        host = urlsplit(url).hostname or "?"
        chunks: list[bytes] = []
        total = 0
        try:
            async with (
                httpx.AsyncClient(timeout=self._timeout, follow_redirects=True) as http,
                http.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise ProviderUnavailable(
                        f"{self.name}/{model}: downloading the image from {host} answered HTTP {response.status_code}"
                    )
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > MAX_BYTES:
                        raise ImageDataError(f"{self.name}/{model}: the image at {host} exceeds {MAX_BYTES} bytes")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(
                f"{self.name}/{model}: could not download the image from {host} ({type(exc).__name__})"
            ) from None
        return b"".join(chunks)

    # -- errors ---------------------------------------------------------------------------------

    def _classify(self, exc: openai.OpenAIError, model: str) -> JobError:
        """The SDK's error as a retryable or permanent job error, with a message a user can act on."""
        where = f"{self.name}/{model}"
        if isinstance(exc, openai.APITimeoutError):
            return ProviderUnavailable(self._scrub(f"{where}: the request timed out after {self._timeout:g} s"))
        if isinstance(exc, openai.APIConnectionError):
            host = exc.request.url.host if exc.request is not None else "?"
            cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else "connection error"
            return ProviderUnavailable(self._scrub(f"{where}: could not reach {host} ({cause})"))
        if not isinstance(exc, openai.APIStatusError):
            return ProviderRejected(self._scrub(f"{where}: {exc}"))
        status = exc.status_code
        body = exc.body if isinstance(exc.body, Mapping) else {}
        message = str(body.get("message") or exc.message)
        code = exc.code or ""
        ref = f" (request {exc.request_id})" if exc.request_id else ""
        if status == 429 and code == "insufficient_quota":
            return ProviderRejected(
                self._scrub(
                    f"{where}: the OpenAI account is out of quota; add credit or raise its limits{ref}: {message}"
                )
            )
        if status == 429:
            retry_after = _http.retry_after(exc.response.headers)
            return RateLimited(
                self._scrub(f"{where}: rate limited by OpenAI (429){ref}: {message}"), retry_after=retry_after
            )
        if status >= 500 or status in (408, 409):
            return ProviderUnavailable(self._scrub(f"{where}: OpenAI failed ({status}){ref}: {message}"))
        if code in CONTENT_POLICY_CODES or exc.type == "image_generation_user_error":
            return ProviderRejected(
                self._scrub(
                    f"{where}: refused by OpenAI's content policy ({code or status}); change the prompt{ref}: {message}"
                )
            )
        if status == 401:
            return ProviderRejected(
                self._scrub(f"{where}: OpenAI did not accept the API key (401); check OPENAI_API_KEY{ref}: {message}")
            )
        if status == 403:
            return ProviderRejected(
                self._scrub(
                    f"{where}: the API key's organization may not use {model} (403); check the organization's "
                    f"verification and model access{ref}: {message}"
                )
            )
        if status == 404:
            return ProviderRejected(self._scrub(f"{where}: model or route not found (404){ref}: {message}"))
        detail = ", ".join(p for p in (code, f"param {exc.param}" if exc.param else "") if p)
        return ProviderRejected(
            self._scrub(
                f"{where}: OpenAI rejected the request ({status}{', ' + detail if detail else ''}){ref}: {message}"
            )
        )

    def _scrub(self, text: str) -> str:
        """Never let the key reach a message, even if a server or proxy echoes it."""
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text


def _usage(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {"images": 1}
    details = usage.input_tokens_details
    return {
        "images": 1,
        "input_tokens": usage.input_tokens,
        "input_text_tokens": details.text_tokens if details is not None else None,
        "input_image_tokens": details.image_tokens if details is not None else None,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }


def _token_cost(usage: dict[str, Any]) -> Decimal | None:
    """gpt-image-1's cost from its token usage; None without usage (dall-e-3), left to the price table."""
    if "output_tokens" not in usage:
        return None
    text_in = usage["input_text_tokens"] if usage["input_text_tokens"] is not None else usage["input_tokens"]
    per_million = (
        int(text_in or 0) * GPT_IMAGE_TOKEN_PRICES["text_input"]
        + int(usage["input_image_tokens"] or 0) * GPT_IMAGE_TOKEN_PRICES["image_input"]
        + int(usage["output_tokens"]) * GPT_IMAGE_TOKEN_PRICES["output"]
    )
    return (per_million / Decimal(1_000_000)).quantize(Decimal("0.000001"))


def _extension(data: bytes) -> str:
    return {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}.get(
        guess_content_type(data, "application/octet-stream"), "bin"
    )
