"""How asynchronous provider jobs finish: signed webhooks, verified and logged as `webhook` job events by
the framework-neutral WebhookReceiver, and the worker-side helpers that read those events or poll instead.

The receiver does no downloads and one database round trip, so it answers in milliseconds; the worker
waiting in `ctx.wait_for_event("webhook", ...)` is woken by the event's NOTIFY and does the heavy work.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import asyncpg
import httpx
from standardwebhooks import Webhook, WebhookVerificationError

from .errors import ConfigError, ImageDataError, ProviderRejected, ProviderUnavailable, RequestError
from .images import MAX_BYTES
from .queries import queries

if TYPE_CHECKING:
    from .queue import JobContext

log = logging.getLogger("imagen.webhooks")

PROVIDERS = ("replicate", "midjourney")
MAX_BODY = 1024 * 1024
NOTIFY_TOKEN_TTL = 3600
MAX_OUTPUT_URLS = 4
MAX_URL_CHARS = 2048
MAX_ERROR_CHARS = 1000
MAX_WEBHOOK_ID_CHARS = 200

_SEED = re.compile(r"(?i)\busing seed:?\s*(\d{1,20})")
_PERCENT = re.compile(r"(\d{1,3})%\|")


def _sql(name: str) -> str:
    return queries("webhooks.sql")[name]


# -- settings ------------------------------------------------------------------------------------


def webhook_secrets(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Per-provider verification secrets: Replicate's signing secret (whsec_..., from
    REPLICATE_WEBHOOK_SECRET, else IMAGEN_WEBHOOK_SECRET), and the key of our own notify-URL tokens
    for the Midjourney proxy (IMAGEN_WEBHOOK_SECRET)."""
    env = os.environ if environ is None else environ
    shared = (env.get("IMAGEN_WEBHOOK_SECRET") or "").strip()
    secrets: dict[str, str] = {}
    replicate = (env.get("REPLICATE_WEBHOOK_SECRET") or "").strip() or shared
    if replicate:
        secrets["replicate"] = replicate
    if shared:
        secrets["midjourney"] = shared
    return secrets


def webhook_url(provider: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The public URL a provider should call back, from IMAGEN_WEBHOOK_URL (the base, e.g.
    https://host/imagen/webhooks); None when unset, and the provider is polled instead."""
    env = os.environ if environ is None else environ
    base = (env.get("IMAGEN_WEBHOOK_URL") or "").strip().rstrip("/")
    if not base:
        return None
    if not base.startswith(("https://", "http://")):
        raise ConfigError(
            f"IMAGEN_WEBHOOK_URL={base!r} is not an http(s) URL; set it to the public base of the webhook "
            "route, such as https://host/imagen/webhooks"
        )
    # A base that already names a provider (…/webhooks/replicate) is accepted: strip it.
    for name in PROVIDERS:
        if base.endswith(f"/{name}"):
            base = base[: -len(name) - 1]
    return f"{base}/{provider}"


def poll_settings(environ: Mapping[str, str] | None = None) -> tuple[float, float]:
    """(interval, cap) in seconds for polling asynchronous providers: IMAGEN_PROVIDER_POLL_INTERVAL
    (5) and IMAGEN_PROVIDER_POLL_TIMEOUT (300)."""
    env = os.environ if environ is None else environ
    return _seconds(env, "IMAGEN_PROVIDER_POLL_INTERVAL", 5.0), _seconds(env, "IMAGEN_PROVIDER_POLL_TIMEOUT", 300.0)


def poll_deadline(ctx: JobContext, cap: float) -> float:
    """When an asynchronous provider stops waiting for its upstream job (time.monotonic()): after `cap`
    seconds, or a margin before the job's own timeout, whichever is sooner. Stopping first raises a
    retryable error that keeps the upstream job id, so the next attempt resumes the job instead of
    the timeout failing it (the margin leaves the last poll request time to answer)."""
    left = ctx.time_left()
    margin = min(10.0, left * 0.1)
    return time.monotonic() + max(0.0, min(cap, left - margin))


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a number; set it to a number of seconds such as {default:g}"
        ) from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be a positive number of seconds")
    return value


# -- tokens in notify URLs (providers without a signature standard) ------------------------------


def url_token(secret: str, provider: str, job_id: uuid.UUID, expires: int) -> str:
    """HMAC-SHA256 of provider, job id and expiry: the credential carried by a callback URL."""
    message = f"{provider}.{job_id}.{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_callback_url(
    base: str, secret: str, provider: str, job_id: uuid.UUID, *, ttl: int = NOTIFY_TOKEN_TTL
) -> str:
    """`base` with job_id, exp and token query parameters that the receiver verifies."""
    expires = int(time.time()) + ttl
    query = urlencode({"job_id": str(job_id), "exp": expires, "token": url_token(secret, provider, job_id, expires)})
    return f"{base}{'&' if '?' in base else '?'}{query}"


# -- what a delivery says, as a small job_events payload -----------------------------------------


def replicate_event(prediction: Mapping[str, Any]) -> dict[str, Any]:
    """The payload of a Replicate prediction (a webhook body or a GET answer): status, output URLs,
    error, seed and progress from the logs. Never the input, the logs or inline data."""
    output = prediction.get("output")
    values = output if isinstance(output, list) else [] if output is None else [output]
    event: dict[str, Any] = {
        "provider": "replicate",
        "provider_job_id": str(prediction.get("id") or ""),
        "status": str(prediction.get("status") or ""),
        "output": _http_urls(values),
    }
    if any(isinstance(v, str) and v.startswith("data:") for v in values):
        event["inline_output"] = True
    if prediction.get("error"):
        event["error"] = _short(str(prediction["error"]), MAX_ERROR_CHARS)
    logs = prediction.get("logs")
    if isinstance(logs, str) and logs:
        seed = _SEED.search(logs)
        if seed is not None and int(seed.group(1)) < 2**63:
            event["seed"] = int(seed.group(1))
        percents = _PERCENT.findall(logs[-4000:])
        if percents:
            event["progress"] = min(int(percents[-1]), 100) / 100
    metrics = prediction.get("metrics")
    if isinstance(metrics, Mapping) and isinstance(metrics.get("predict_time"), int | float):
        event["predict_time"] = round(float(metrics["predict_time"]), 3)
    return event


def midjourney_event(task: Mapping[str, Any]) -> dict[str, Any]:
    """The payload of a Midjourney-proxy task (a notifyHook body or a fetch answer)."""
    event: dict[str, Any] = {
        "provider": "midjourney",
        "provider_job_id": str(task.get("id") or ""),
        "status": str(task.get("status") or ""),
        "output": _http_urls([task.get("imageUrl")]),
    }
    progress = percent(task.get("progress"))
    if progress is not None:
        event["progress"] = progress
    if task.get("failReason"):
        event["error"] = _short(str(task["failReason"]), MAX_ERROR_CHARS)
    return event


def percent(value: object) -> float | None:
    """ "45%" → 0.45; None for anything else."""
    if not isinstance(value, str):
        return None
    match = re.fullmatch(r"\s*(\d{1,3}(?:\.\d+)?)\s*%\s*", value)
    return min(float(match.group(1)), 100.0) / 100 if match else None


def _http_urls(values: list[Any]) -> list[str]:
    urls = [v for v in values if isinstance(v, str) and v.startswith(("https://", "http://"))]
    return [u for u in urls if len(u) <= MAX_URL_CHARS][:MAX_OUTPUT_URLS]


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the receiver ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Delivery:
    provider_job_id: str
    delivery_id: str
    payload: dict[str, Any]
    job_id: uuid.UUID | None = None


# The error codes of the refusals, by status (docs/api.md, Error).
_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    413: "payload_too_large",
    422: "unprocessable",
    503: "unavailable",
}


class _Refused(RequestError):
    """A delivery refused with `status`, in the API's one error shape (`RequestError.as_json`)."""

    def __init__(self, status: int, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.status = status
        self.code = code or _CODES.get(status, "invalid_request")


def error_body(status: int, message: str, *, code: str | None = None, field: str | None = None) -> dict[str, Any]:
    """The API's one error shape, `{"error": {"code", "message", "field"?}}`, for a webhook answer."""
    return _Refused(status, message, code=code, field=field).as_json()


class WebhookReceiver:
    """Verifies provider webhooks and logs each accepted delivery once as a `webhook` job event.

    Mount `handle` at POST {base_url}imagen/webhooks/{provider} in any framework: it takes the raw body
    and headers (and the query, for providers whose callback URL carries a token) and returns
    (HTTP status, JSON body). Unsigned, forged or stale deliveries get 401 and touch nothing.
    """

    def __init__(self, pool: asyncpg.Pool, secrets: Mapping[str, str]) -> None:
        self._pool = pool
        self._secrets = {name: value for name, value in secrets.items() if value}
        self._replicate: Webhook | None = None
        if "replicate" in self._secrets:
            try:
                self._replicate = Webhook(self._secrets["replicate"])
            except Exception as exc:  # binascii.Error, EmptyWebhookSecretError, RuntimeError
                raise ConfigError(
                    "the Replicate webhook secret is not a Standard Webhooks secret (whsec_ followed by base64); "
                    "set REPLICATE_WEBHOOK_SECRET to the key from GET https://api.replicate.com/v1/webhooks/default/secret"
                ) from exc

    @classmethod
    def from_env(cls, pool: asyncpg.Pool, environ: Mapping[str, str] | None = None) -> WebhookReceiver:
        secrets = webhook_secrets(environ)
        if not secrets:
            log.warning("no webhook secret is set (IMAGEN_WEBHOOK_SECRET): every webhook will be refused")
        return cls(pool, secrets)

    async def handle(
        self,
        provider: str,
        headers: Mapping[str, str],
        body: bytes,
        query: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Verify and record one delivery; returns (status, body) for the HTTP answer."""
        try:
            delivery = self._verify(provider, {k.lower(): v for k, v in headers.items()}, body, query or {})
        except _Refused as refused:
            log.warning("webhook provider=%s refused status=%d: %s", provider[:40], refused.status, refused.message)
            return refused.status, refused.as_json()
        try:
            row = await self._pool.fetchrow(
                _sql("record_delivery"),
                provider,
                delivery.provider_job_id,
                json.dumps(delivery.payload),
                delivery.delivery_id,
                delivery.job_id,
            )
        except asyncpg.IntegrityConstraintViolationError as exc:
            log.warning("webhook provider=%s delivery=%s not recorded: %s", provider, delivery.delivery_id, exc)
            return 422, error_body(422, "the delivery could not be recorded")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.error("webhook provider=%s: database unavailable (%s)", provider, type(exc).__name__)
            return 503, error_body(503, "temporarily unavailable; retry later")
        assert row is not None
        if row["job_id"] is None:
            log.warning("webhook provider=%s: no job has provider job id %r", provider, delivery.provider_job_id)
            return 404, error_body(404, "no job for this provider job id")
        if row["event_id"] is None:
            log.info("webhook provider=%s delivery=%s duplicate: ignored", provider, delivery.delivery_id)
            return 200, {"status": "duplicate"}
        log.info(
            "job=%s event=webhook provider=%s status=%s delivery=%s",
            row["job_id"],
            provider,
            delivery.payload.get("status"),
            delivery.delivery_id,
        )
        return 200, {"status": "accepted", "event_id": row["event_id"]}

    def _verify(self, provider: str, headers: dict[str, str], body: bytes, query: Mapping[str, str]) -> _Delivery:
        if provider not in PROVIDERS:
            raise _Refused(404, f"no webhook receiver for provider {provider[:40]!r}")
        if len(body) > MAX_BODY:
            raise _Refused(413, f"the body is over {MAX_BODY} bytes")
        if provider == "replicate":
            return self._verify_replicate(headers, body)
        return self._verify_midjourney(query, body)

    def _verify_replicate(self, headers: dict[str, str], body: bytes) -> _Delivery:
        if self._replicate is None:
            raise _Refused(401, "no webhook secret is configured for replicate (REPLICATE_WEBHOOK_SECRET)")
        try:
            # Standard Webhooks: HMAC-SHA256 over id.timestamp.body, 5-minute tolerance, compare_digest.
            self._replicate.verify(body, headers, json_parse=False)
        except (WebhookVerificationError, ValueError, TypeError) as exc:
            raise _Refused(401, f"signature verification failed: {_short(str(exc), 200)}") from None
        webhook_id = headers["webhook-id"]
        if len(webhook_id) > MAX_WEBHOOK_ID_CHARS:
            raise _Refused(400, "webhook-id is too long", code="invalid_field", field="webhook-id")
        prediction = _json_object(body)
        event = replicate_event(prediction)
        if not event["provider_job_id"] or not event["status"]:
            raise _Refused(400, "the body is not a prediction (no id or status)", code="invalid_json")
        return _Delivery(event["provider_job_id"], f"replicate:{webhook_id}", event)

    def _verify_midjourney(self, query: Mapping[str, str], body: bytes) -> _Delivery:
        secret = self._secrets.get("midjourney")
        if secret is None:
            raise _Refused(401, "no webhook secret is configured for midjourney (IMAGEN_WEBHOOK_SECRET)")
        job, exp, token = query.get("job_id"), query.get("exp"), query.get("token")
        if not (job and exp and token):
            raise _Refused(401, "unsigned: the callback URL carries no job_id, exp and token")
        try:
            job_id = uuid.UUID(job)
            expires = int(exp)
        except ValueError:
            raise _Refused(401, "malformed job_id or exp") from None
        expected = url_token(secret, "midjourney", job_id, expires)
        if not hmac.compare_digest(expected.encode(), token.encode("utf-8", "replace")):
            raise _Refused(401, "token verification failed")
        if expires < time.time():
            raise _Refused(401, "the callback URL's token has expired")
        task = _json_object(body)
        event = midjourney_event(task)
        if not event["provider_job_id"] or not event["status"]:
            raise _Refused(400, "the body is not a task (no id or status)", code="invalid_json")
        # The proxy has no delivery id: one delivery per task state (status and progress).
        key = f"{event['provider_job_id']}:{event['status']}:{task.get('progress') or ''}"
        if len(key) > MAX_WEBHOOK_ID_CHARS:
            raise _Refused(400, "task id or progress is too long")
        return _Delivery(event["provider_job_id"], f"midjourney:{key}", event, job_id)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        raise _Refused(400, "the body is not JSON", code="invalid_json") from None
    if not isinstance(value, dict):
        raise _Refused(400, "the body is not a JSON object", code="invalid_json")
    return value


# -- worker side -----------------------------------------------------------------------------------


async def latest_webhook(ctx: JobContext, provider_job_id: str) -> dict[str, Any] | None:
    """The newest recorded webhook payload for this job's provider job, if any arrived."""
    text = await ctx.pool.fetchval(_sql("latest_webhook"), ctx.job.id, provider_job_id)
    if text is None:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None


async def download_output(
    http: httpx.AsyncClient, url: str, *, what: str, headers: Mapping[str, str] | None = None
) -> bytes:
    """Fetch an output image a provider named (an https URL, or a data: URL held in memory only).

    404/410 raise OutputGone (retryable; the output expired or is not there yet); 5xx and network
    errors ProviderUnavailable; other 4xx ProviderRejected. Larger than the image cap: ImageDataError.
    """
    if url.startswith("data:"):
        _, _, encoded = url.partition(",")
        try:
            data = base64.b64decode(encoded, validate=False)
        except (binascii.Error, ValueError):
            raise ProviderRejected(f"{what} returned an undecodable data: URL") from None
        if len(data) > MAX_BYTES:
            raise ImageDataError(f"the image from {what} is over {MAX_BYTES} bytes")
        return data
    if not url.startswith(("https://", "http://")):
        raise ProviderRejected(f"{what} returned an output that is not a URL")
    try:
        async with http.stream("GET", url, headers=dict(headers or {})) as resp:
            if resp.status_code in (404, 410):
                raise OutputGone(f"{what}'s output is gone ({resp.status_code}); the provider keeps outputs briefly")
            if resp.status_code >= 500 or resp.status_code == 429:
                raise ProviderUnavailable(f"downloading {what}'s output failed ({resp.status_code})")
            if resp.status_code >= 400:
                raise ProviderRejected(f"downloading {what}'s output was refused ({resp.status_code})")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > MAX_BYTES:
                    raise ImageDataError(f"the image from {what} is over {MAX_BYTES} bytes")
                chunks.append(chunk)
    except httpx.TimeoutException:
        raise ProviderUnavailable(f"downloading {what}'s output timed out") from None
    except httpx.HTTPError as exc:
        raise ProviderUnavailable(f"downloading {what}'s output failed: {type(exc).__name__}") from None
    return b"".join(chunks)


class OutputGone(ProviderUnavailable):
    """A provider's output URL answered 404/410: expired, or not yet there."""
