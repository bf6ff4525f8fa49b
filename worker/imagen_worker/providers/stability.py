"""Stability AI's v2beta Stable Image API over httpx: generate core / ultra / sd3 (the image comes back in
the answer), and creative upscale (the answer is an id, polled at GET /v2beta/results/{id})."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import os
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import httpx

from ..errors import ConfigError, ProviderRejected, ProviderUnavailable, SpecError
from ..spec import ImagePromptSpec
from ..webhooks import poll_settings
from ._http import json_object, raise_for_status, send
from .base import Capabilities, GeneratedImage, GenerationRequest, Provider, ProviderResult

if TYPE_CHECKING:
    from ..queue import JobContext

log = logging.getLogger("imagen.providers.stability")
WHO = "Stability"  # how error messages name the provider

DEFAULT_BASE_URL = "https://api.stability.ai"
ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")
# Form fields the provider sets from the spec and the model; spec.options may add any other.
RESERVED_FIELDS = frozenset({"prompt", "image", "mode", "model", "negative_prompt", "seed", "aspect_ratio"})


@dataclass(frozen=True)
class Route:
    """Where a model's requests go, and what that endpoint accepts."""

    path: str
    sd3_model: str | None = None
    output_formats: tuple[str, ...] = ("png", "jpeg", "webp")
    upscale: bool = False


ROUTES: dict[str, Route] = {
    "core": Route("/v2beta/stable-image/generate/core"),
    "ultra": Route("/v2beta/stable-image/generate/ultra"),
    "sd3.5-large": Route("/v2beta/stable-image/generate/sd3", "sd3.5-large", ("png", "jpeg")),
    "sd3.5-large-turbo": Route("/v2beta/stable-image/generate/sd3", "sd3.5-large-turbo", ("png", "jpeg")),
    "sd3.5-medium": Route("/v2beta/stable-image/generate/sd3", "sd3.5-medium", ("png", "jpeg")),
    "upscale-creative": Route("/v2beta/stable-image/upscale/creative", upscale=True),
}


def _caps(price: str, *, edit: bool = False, negative_prompt: bool = True, ratios: bool = True) -> Capabilities:
    return Capabilities(
        aspect_ratios=ASPECT_RATIOS if ratios else (),
        seed=True,
        negative_prompt=negative_prompt,
        edit=edit,
        price_usd=Decimal(price),
        max_prompt_chars=10000,  # the v2beta APIs' documented prompt limit
    )


class StabilityProvider(Provider):
    """Stable Image Core, Ultra, SD 3.5 and Creative Upscale. STABILITY_API_KEY, STABILITY_BASE_URL."""

    name = "stability"
    # Prices: credits at $0.01 each, as listed by Stability.
    models: ClassVar[dict[str, Capabilities]] = {
        "core": _caps("0.03"),
        "ultra": _caps("0.08", edit=True),
        "sd3.5-large": _caps("0.065", edit=True),
        "sd3.5-large-turbo": _caps("0.04", edit=True, negative_prompt=False),
        "sd3.5-medium": _caps("0.035", edit=True),
        "upscale-creative": _caps("0.25", edit=True, ratios=False),
    }

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        poll_interval: float | None = None,
        poll_timeout: float | None = None,
        timeout: float = 120.0,
    ) -> None:
        self._api_key = api_key if api_key is not None else os.environ.get("STABILITY_API_KEY")
        self.base_url = (base_url or os.environ.get("STABILITY_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        interval, cap = poll_settings()
        self.poll_interval = poll_interval if poll_interval is not None else interval
        self.poll_timeout = poll_timeout if poll_timeout is not None else cap
        self.timeout = timeout

    def check(self, spec: ImagePromptSpec, model: str) -> None:
        super().check(spec, model)
        route = ROUTES[model]
        problems: list[str] = []
        fmt = spec.options.get("output_format")
        if fmt is not None and fmt not in route.output_formats:
            problems.append(
                f"spec.options.output_format: {fmt!r} is not offered by stability/{model}; "
                f"use one of {', '.join(route.output_formats)}"
            )
        reserved = sorted(RESERVED_FIELDS.intersection(spec.options))
        if reserved:
            problems.append(f"spec.options: {', '.join(reserved)} come from the spec and the model; remove them")
        if route.upscale:
            if spec.previous_image_id is None:
                problems.append(f"spec.previous_image_id: stability/{model} upscales a previous image; set it")
            if spec.size is not None or spec.aspect_ratio is not None:
                problems.append(f"spec.size/aspect_ratio: stability/{model} keeps the previous image's shape")
        if problems:
            raise SpecError("; ".join(problems))

    def unavailable_reason(self) -> str | None:
        return None if self._api_key else "STABILITY_API_KEY is not set"

    async def generate(self, request: GenerationRequest, ctx: JobContext) -> ProviderResult:
        route = ROUTES[request.model]
        if route.upscale and request.previous_image is None:
            raise SpecError(f"spec.previous_image_id: stability/{request.model} upscales a previous image; set it")
        async with self._client() as http:
            image: GeneratedImage | None = None
            pending = ctx.job.provider_job_id
            if pending:
                # An earlier attempt started an asynchronous generation: collect it rather than pay twice.
                try:
                    image = await self._result(http, pending)
                except _ResultGone:
                    log.info("job=%s stability result %s is gone; generating anew", ctx.job.id, pending)
                    pending = None
            if image is None and pending is None:
                started = await self._start(http, route, request)
                if isinstance(started, str):
                    pending = started
                    await ctx.set_provider_job_id(started)
                else:
                    image = started
            if image is None:
                assert pending is not None
                image = await self._await_result(http, pending)
        return ProviderResult(image, usage={"images": 1})

    # -- HTTP --------------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if not self._api_key:
            raise ConfigError(
                "STABILITY_API_KEY is not set; create a key at https://platform.stability.ai/account/keys"
            )
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers={"authorization": f"Bearer {self._api_key}", "stability-client-id": "imagen-canvas"},
            timeout=httpx.Timeout(self.timeout, connect=10.0),
        )

    async def _start(self, http: httpx.AsyncClient, route: Route, request: GenerationRequest) -> GeneratedImage | str:
        """POST the generation; the image, or the id of an asynchronous generation."""
        resp = await send(http.post(route.path, files=self._form(route, request), headers={"accept": "image/*"}), WHO)
        return _read(resp)

    async def _result(self, http: httpx.AsyncClient, result_id: str) -> GeneratedImage | None:
        """One look at an asynchronous generation: the image, or None while it is in progress."""
        resp = await send(http.get(f"/v2beta/results/{result_id}", headers={"accept": "image/*"}), WHO)
        if resp.status_code == 202:
            return None
        if resp.status_code == 404:
            raise _ResultGone(result_id)
        got = _read(resp)
        if isinstance(got, str):
            raise ProviderUnavailable(f"Stability's result {result_id} answered without an image")
        return got

    async def _await_result(self, http: httpx.AsyncClient, result_id: str) -> GeneratedImage:
        deadline = time.monotonic() + self.poll_timeout
        while True:
            await asyncio.sleep(max(0.0, min(self.poll_interval, deadline - time.monotonic())))
            try:
                image = await self._result(http, result_id)
            except _ResultGone:
                raise ProviderRejected(
                    f"Stability has no result {result_id} (404); it expired or never existed"
                ) from None
            if image is not None:
                return image
            if time.monotonic() >= deadline:
                raise ProviderUnavailable(
                    f"Stability generation {result_id} did not finish within {self.poll_timeout:g} s; a retry resumes it"
                )

    def _form(self, route: Route, request: GenerationRequest) -> list[tuple[str, tuple[str | None, Any, str | None]]]:
        spec = request.spec
        caps = self.models[request.model]
        fields: dict[str, str] = {"output_format": "png"}
        fields.update({k: _form_value(v) for k, v in spec.options.items() if _scalar(v) and k not in RESERVED_FIELDS})
        fields["prompt"] = request.prompt
        if spec.negative_prompt and caps.negative_prompt:
            fields["negative_prompt"] = spec.negative_prompt
        if spec.seed is not None:
            fields["seed"] = str(spec.seed)
        image = request.previous_image
        if route.sd3_model is not None:
            fields["model"] = route.sd3_model
            fields["mode"] = "text-to-image" if image is None else "image-to-image"
        if image is not None and not route.upscale:
            fields.setdefault("strength", "0.6")
        if image is None:
            ratio = spec.aspect_ratio
            if ratio is None and request.width and request.height:
                ratio = nearest_ratio(request.width, request.height, ASPECT_RATIOS)
            if ratio is not None:
                fields["aspect_ratio"] = ratio
        form: list[tuple[str, tuple[str | None, Any, str | None]]] = [(k, (None, v, None)) for k, v in fields.items()]
        if image is not None:
            form.append(("image", ("image", image, _sniff(image))))
        return form


class _ResultGone(Exception):
    """GET /v2beta/results/{id} answered 404."""


def nearest_ratio(width: int, height: int, ratios: tuple[str, ...]) -> str:
    """The offered aspect ratio closest to width:height (by log ratio)."""
    target = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(math.log(int(w) / int(h)) - target)

    return min(ratios, key=distance)


def _scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool)


def _form_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _read(resp: httpx.Response) -> GeneratedImage | str:
    """A 200 answer: the image (raw bytes or JSON base64) or a generation id. Errors raise, classified."""
    if resp.status_code >= 300:
        _raise_for(resp)
    content_type = resp.headers.get("content-type", "")
    if content_type.startswith("image/"):
        _check_finish(resp.headers.get("finish-reason"))
        return GeneratedImage(resp.content, seed=_int(resp.headers.get("seed")))
    body = json_object(resp, WHO)
    if isinstance(body.get("image"), str):
        _check_finish(body.get("finish_reason"))
        try:
            data = base64.b64decode(body["image"], validate=True)
        except (binascii.Error, ValueError):
            raise ProviderUnavailable("Stability answered with an undecodable image") from None
        return GeneratedImage(data, seed=_int(body.get("seed")))
    if isinstance(body.get("id"), str) and body["id"]:
        return str(body["id"])
    raise ProviderUnavailable(f"Stability answered {resp.status_code} with neither an image nor a generation id")


def _check_finish(reason: object) -> None:
    if reason is None or str(reason).upper() == "SUCCESS":
        return
    if str(reason).upper() == "CONTENT_FILTERED":
        raise ProviderRejected(
            "Stability's content filter blocked the image (finish-reason CONTENT_FILTERED); "
            "change the prompt or the previous image"
        )
    raise ProviderUnavailable(f"Stability finished the generation with {str(reason)[:50]!r}")


def _raise_for(resp: httpx.Response) -> NoReturn:
    """Classify an error answer ({"id", "name", "errors": [...]}) into a retryable or permanent error."""
    detail = _detail(resp)
    refusals = {
        401: f"Stability refused the API key (401): {detail}; check STABILITY_API_KEY",
        402: f"Stability's account is out of credits (402): {detail}",
        403: f"Stability's content moderation refused the request (403): {detail}; change the prompt",
        413: f"the request is too large for Stability (413): {detail}; use a smaller previous image",
        422: f"Stability could not process the request (422): {detail}",
    }
    raise_for_status(resp, WHO, detail, refusals)


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return " ".join(resp.text.split())[:300] or resp.reason_phrase
    if isinstance(body, dict):
        errors = body.get("errors")
        parts = [str(e) for e in errors] if isinstance(errors, list) else []
        name = str(body.get("name") or "")
        text = "; ".join(parts) or str(body.get("message") or "")
        return f"{name}: {text}"[:500] if name else text[:500] or resp.reason_phrase
    return str(body)[:300]


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value is not None else None
    except ValueError:
        return None
