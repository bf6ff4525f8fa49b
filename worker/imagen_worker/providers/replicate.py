"""Replicate predictions over httpx: create one, then finish by a signed webhook when IMAGEN_WEBHOOK_URL is
set (falling back to a poll whenever none arrives within the poll interval) or else by polling
GET /v1/predictions/{id}; the output is downloaded at once, since Replicate keeps it only briefly.

A cancelled job is cancelled upstream; a retried attempt resumes the prediction an earlier attempt
recorded in imagen.jobs.provider_job_id instead of paying for a new one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import httpx

from ..errors import ConfigError, ProviderRejected, ProviderUnavailable
from ..webhooks import (
    OutputGone,
    download_output,
    latest_webhook,
    poll_deadline,
    poll_settings,
    replicate_event,
    webhook_url,
)
from ._http import json_object, raise_for_status, retry_after, send
from .base import Capabilities, GeneratedImage, GenerationRequest, Provider, ProviderResult
from .stability import nearest_ratio

if TYPE_CHECKING:
    from ..queue import JobContext

log = logging.getLogger("imagen.providers.replicate")

DEFAULT_BASE_URL = "https://api.replicate.com"
WHO = "Replicate"  # how error messages name the provider
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
FLUX_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
# Any public model ("owner/name") or a pinned version ("owner/name:<64 hex>") may be used.
_MODEL = re.compile(r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*(:[0-9a-f]{64})?$")
_RETRYABLE_FAILURE = re.compile(r"(?i)interrupted|please retry")
_THROTTLED_FOR = re.compile(r"(?i)available in (\d+) seconds?")
# Models we know nothing about: the spec's fields are passed as the conventional input names.
GENERIC = Capabilities(seed=True, webhook=True, cancel=True)


def _flux(price: str) -> Capabilities:
    return Capabilities(aspect_ratios=FLUX_RATIOS, seed=True, webhook=True, cancel=True, price_usd=Decimal(price))


@dataclass(frozen=True)
class _Prediction:
    id: str
    status: str
    outputs: tuple[str, ...] = ()
    error: str | None = None
    seed: int | None = None
    progress: float | None = None
    predict_time: float | None = None
    # False when built from a webhook payload that left inline (data:) outputs out.
    complete: bool = True

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> _Prediction:
        event = replicate_event(body)
        raw = body.get("output")
        values = raw if isinstance(raw, list) else [] if raw is None else [raw]
        return cls.from_event(event, tuple(v for v in values if isinstance(v, str)))

    @classmethod
    def from_event(cls, event: Mapping[str, Any], outputs: tuple[str, ...] | None = None) -> _Prediction:
        return cls(
            id=str(event.get("provider_job_id") or ""),
            status=str(event.get("status") or ""),
            outputs=outputs if outputs is not None else tuple(event.get("output") or ()),
            error=event.get("error"),
            seed=event.get("seed"),
            progress=event.get("progress"),
            predict_time=event.get("predict_time"),
            complete=outputs is not None or not event.get("inline_output"),
        )


class ReplicateProvider(Provider):
    """Replicate models by "owner/name" (or "owner/name:version"). REPLICATE_API_TOKEN, REPLICATE_BASE_URL."""

    name = "replicate"
    models: ClassVar[dict[str, Capabilities]] = {
        "black-forest-labs/flux-schnell": _flux("0.003"),
        "black-forest-labs/flux-dev": _flux("0.025"),
        "black-forest-labs/flux-1.1-pro": _flux("0.04"),
    }
    default_input: ClassVar[dict[str, dict[str, Any]]] = {
        "black-forest-labs/flux-schnell": {"output_format": "png", "num_outputs": 1},
        "black-forest-labs/flux-dev": {"output_format": "png", "num_outputs": 1},
        "black-forest-labs/flux-1.1-pro": {"output_format": "png"},
    }

    def __init__(
        self,
        api_token: str | None = None,
        base_url: str | None = None,
        *,
        webhook_url: str | None = None,
        poll_interval: float | None = None,
        poll_timeout: float | None = None,
        prefer_wait: int | None = None,
        timeout: float = 90.0,
    ) -> None:
        """`webhook_url`: this provider's public callback URL; None reads IMAGEN_WEBHOOK_URL, "" polls only.
        `prefer_wait`: seconds (1-60) the create call may hold for a result (Prefer: wait), or
        REPLICATE_PREFER_WAIT; unset: never."""
        self._token = api_token if api_token is not None else os.environ.get("REPLICATE_API_TOKEN")
        self.base_url = (base_url or os.environ.get("REPLICATE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.webhook_url = (webhook_url if webhook_url is not None else _default_webhook_url()) or None
        interval, cap = poll_settings()
        self.poll_interval = poll_interval if poll_interval is not None else interval
        self.poll_timeout = poll_timeout if poll_timeout is not None else cap
        self.prefer_wait = prefer_wait if prefer_wait is not None else _prefer_wait_env()
        self.timeout = timeout
        # job id → prediction id, for cancel(), which runs after generate() was interrupted.
        self._inflight: dict[uuid.UUID, str] = {}

    def capabilities(self, model: str) -> Capabilities:
        if model not in self.models and _MODEL.match(model):
            return GENERIC
        return super().capabilities(model)

    def unavailable_reason(self) -> str | None:
        return None if self._token else "REPLICATE_API_TOKEN is not set"

    async def generate(self, request: GenerationRequest, ctx: JobContext) -> ProviderResult:
        cancelled = False
        try:
            async with self._client() as http:
                pred, resumed = await self._resume_or_create(http, request, ctx)
                pred = await self._finish(http, ctx, pred)
                try:
                    data = await self._download(http, pred)
                except OutputGone:
                    if not resumed:
                        raise
                    log.info("job=%s prediction %s output expired; starting a new prediction", ctx.job.id, pred.id)
                    pred = await self._finish(http, ctx, await self._create(http, request, ctx))
                    data = await self._download(http, pred)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if not cancelled:
                self._inflight.pop(ctx.job.id, None)
        usage: dict[str, Any] = {"images": 1, "prediction_id": pred.id}
        if pred.predict_time is not None:
            usage["predict_time"] = pred.predict_time
        seed = pred.seed if pred.seed is not None else request.spec.seed
        return ProviderResult(GeneratedImage(data, seed=seed), usage=usage)

    async def cancel(self, ctx: JobContext) -> None:
        """Cancel the prediction upstream when the owner cancelled the job or it ran out of time. On a
        worker shutdown or a lost lease the prediction is left running: the next attempt resumes it."""
        prediction_id = self._inflight.pop(ctx.job.id, None) or ctx.job.provider_job_id
        reason = ctx.stop_reason
        if reason not in ("cancelled", "timed_out"):
            if prediction_id:
                log.info("job=%s stopped (%s): prediction %s left running to resume", ctx.job.id, reason, prediction_id)
            return
        if prediction_id is None:
            return
        try:
            async with self._client(timeout=10.0) as http:
                resp = await http.post(f"/v1/predictions/{prediction_id}/cancel", headers=self._auth())
            log.info("job=%s cancelled prediction %s upstream (%d)", ctx.job.id, prediction_id, resp.status_code)
        except (httpx.HTTPError, ConfigError) as exc:
            log.warning("job=%s upstream cancel of %s failed: %s", ctx.job.id, prediction_id, type(exc).__name__)

    # -- steps -----------------------------------------------------------------------------------

    async def _resume_or_create(
        self, http: httpx.AsyncClient, request: GenerationRequest, ctx: JobContext
    ) -> tuple[_Prediction, bool]:
        previous = ctx.job.provider_job_id
        if previous:
            pred = await self._get(http, previous, missing_ok=True)
            if pred is not None and pred.status not in ("failed", "canceled", "aborted"):
                log.info("job=%s resuming prediction %s (%s)", ctx.job.id, previous, pred.status)
                self._inflight[ctx.job.id] = previous
                return pred, True
            log.info(
                "job=%s prediction %s is %s; starting a new one", ctx.job.id, previous, pred.status if pred else "gone"
            )
        return await self._create(http, request, ctx), False

    async def _create(self, http: httpx.AsyncClient, request: GenerationRequest, ctx: JobContext) -> _Prediction:
        owner_name, _, version = request.model.partition(":")
        body: dict[str, Any] = {"input": self._input(request)}
        if version:
            path = "/v1/predictions"
            body["version"] = version
        else:
            path = f"/v1/models/{owner_name}/predictions"
        if self.webhook_url:
            body["webhook"] = self.webhook_url
            body["webhook_events_filter"] = ["completed"]
        headers = self._auth()
        if self.prefer_wait:
            headers["prefer"] = f"wait={self.prefer_wait}"
        resp = await send(http.post(path, json=body, headers=headers), WHO)
        if resp.status_code >= 300:
            _raise_for(resp, request.model)
        pred = _Prediction.from_api(json_object(resp, WHO))
        if not pred.id:
            raise ProviderUnavailable("Replicate answered without a prediction id")
        self._inflight[ctx.job.id] = pred.id
        await ctx.set_provider_job_id(pred.id)
        log.info("job=%s created prediction %s (%s)", ctx.job.id, pred.id, pred.status)
        return pred

    async def _finish(self, http: httpx.AsyncClient, ctx: JobContext, pred: _Prediction) -> _Prediction:
        """Wait until the prediction has ended; return it if it succeeded, else raise, classified."""
        if pred.status not in TERMINAL:
            pred = await self._wait(http, ctx, pred.id)
        if pred.status == "succeeded":
            return pred
        if pred.status == "failed":
            message = f"Replicate prediction {pred.id} failed: {pred.error or 'no reason given'}"
            if pred.error and _RETRYABLE_FAILURE.search(pred.error):
                raise ProviderUnavailable(message)
            raise ProviderRejected(message)
        raise ProviderRejected(f"Replicate prediction {pred.id} was {pred.status} on Replicate, not by this job")

    async def _wait(self, http: httpx.AsyncClient, ctx: JobContext, prediction_id: str) -> _Prediction:
        started = time.monotonic()
        deadline = poll_deadline(ctx, self.poll_timeout)
        reported: float | None = None
        while True:
            if self.webhook_url:
                hook = await self._webhook_result(http, ctx, prediction_id)
                if hook is not None:
                    return hook
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProviderUnavailable(
                    f"Replicate prediction {prediction_id} did not finish within "
                    f"{time.monotonic() - started:.0f} s of this attempt; a retry resumes it"
                )
            # With a webhook configured, a delivery wakes us at once; none within the interval: poll.
            if self.webhook_url:
                if await ctx.wait_for_event("webhook", min(self.poll_interval, remaining)):
                    continue
            else:
                await asyncio.sleep(min(self.poll_interval, remaining))
            pred = await self._get(http, prediction_id)
            assert pred is not None
            if pred.progress is not None and pred.progress != reported and pred.status not in TERMINAL:
                reported = pred.progress
                await ctx.progress(pred.progress, f"{pred.status} {round(pred.progress * 100)}%")
            if pred.status in TERMINAL:
                return pred

    async def _webhook_result(self, http: httpx.AsyncClient, ctx: JobContext, prediction_id: str) -> _Prediction | None:
        payload = await latest_webhook(ctx, prediction_id)
        if payload is None or payload.get("status") not in TERMINAL:
            return None
        pred = _Prediction.from_event(payload)
        if pred.status == "succeeded" and (not pred.outputs or not pred.complete):
            # The delivery named no output we keep (inline data is never stored): ask the API.
            return await self._get(http, prediction_id)
        return pred

    async def _get(
        self, http: httpx.AsyncClient, prediction_id: str, *, missing_ok: bool = False
    ) -> _Prediction | None:
        resp = await send(http.get(f"/v1/predictions/{prediction_id}", headers=self._auth()), WHO)
        if resp.status_code == 404 and missing_ok:
            return None
        if resp.status_code >= 300:
            _raise_for(resp, prediction_id)
        return _Prediction.from_api(json_object(resp, WHO))

    async def _download(self, http: httpx.AsyncClient, pred: _Prediction) -> bytes:
        if not pred.outputs:
            raise ProviderRejected(f"Replicate prediction {pred.id} succeeded without an output")
        url = pred.outputs[0]
        # The token goes only to Replicate's own API host (file URLs there need it), never to a CDN.
        same_host = url.startswith("http") and httpx.URL(url).host == httpx.URL(self.base_url).host
        return await download_output(http, url, what="Replicate", headers=self._auth() if same_host else None)

    def _input(self, request: GenerationRequest) -> dict[str, Any]:
        spec = request.spec
        caps = self.capabilities(request.model)
        data: dict[str, Any] = dict(self.default_input.get(request.model, {}))
        data.update(spec.options)
        data["prompt"] = request.prompt
        if spec.aspect_ratio is not None:
            data["aspect_ratio"] = spec.aspect_ratio
        elif request.width and request.height:
            if caps.aspect_ratios:
                data["aspect_ratio"] = nearest_ratio(request.width, request.height, caps.aspect_ratios)
            else:
                data["width"], data["height"] = request.width, request.height
        if spec.seed is not None:
            data["seed"] = spec.seed
        if spec.negative_prompt and caps.negative_prompt:
            data["negative_prompt"] = spec.negative_prompt
        return data

    # -- HTTP --------------------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._token}"}

    def _client(self, timeout: float | None = None) -> httpx.AsyncClient:
        if not self._token:
            raise ConfigError(
                "REPLICATE_API_TOKEN is not set; create a token at https://replicate.com/account/api-tokens"
            )
        return httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout or self.timeout, connect=10.0),
            follow_redirects=True,
        )


def _default_webhook_url() -> str | None:
    return webhook_url("replicate")


def _prefer_wait_env() -> int | None:
    raw = (os.environ.get("REPLICATE_PREFER_WAIT") or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 60:
        raise ConfigError(f"REPLICATE_PREFER_WAIT={raw!r} must be a whole number of seconds from 1 to 60")
    return int(raw)


def _raise_for(resp: httpx.Response, subject: str) -> NoReturn:
    """Classify an error answer ({"title", "detail", "status"}) into a retryable or permanent error."""
    detail = _detail(resp)
    wait = retry_after(resp.headers)
    if wait is None and resp.status_code == 429 and (match := _THROTTLED_FOR.search(detail)):
        wait = float(match.group(1))
    refusals = {
        401: f"Replicate refused the API token (401): {detail}; check REPLICATE_API_TOKEN",
        402: f"Replicate needs billing set up or more credit (402): {detail}",
        404: f"Replicate has no {subject!r} (404): {detail}; check the model name",
        422: f"Replicate rejected the input (422): {detail}",
    }
    raise_for_status(resp, "Replicate", detail, refusals, wait=wait)


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return " ".join(resp.text.split())[:300] or resp.reason_phrase
    if isinstance(body, dict):
        return " ".join(str(body.get("detail") or body.get("title") or body).split())[:500]
    return str(body)[:300]
