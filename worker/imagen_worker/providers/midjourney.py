"""The de-facto Midjourney proxy protocol (novicezk/midjourney-proxy and the services that speak it):
POST {base}/mj/submit/imagine gives a task id, GET {base}/mj/task/{id}/fetch its status and progress.

The proxy's notifyHook callbacks (to IMAGEN_WEBHOOK_URL, with an HMAC token in the URL since the proxy
signs nothing) only wake the worker early: the task is always read back from the proxy itself, so a
callback can never make a job succeed. Progress percentages become progress events.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import httpx

from ..errors import ConfigError, ProviderRejected, ProviderUnavailable, RateLimited, SpecError
from ..spec import ImagePromptSpec
from ..webhooks import (
    download_output,
    midjourney_event,
    poll_deadline,
    poll_settings,
    signed_callback_url,
    webhook_secrets,
    webhook_url,
)
from ._http import json_object, raise_for_status, send
from .base import Capabilities, GeneratedImage, GenerationRequest, Provider, ProviderResult

if TYPE_CHECKING:
    from ..queue import JobContext

log = logging.getLogger("imagen.providers.midjourney")
WHO = "the Midjourney proxy"  # how error messages name the provider

MODEL_FLAGS = {"midjourney-v7": "--v 7", "midjourney-v6.1": "--v 6.1", "niji-6": "--niji 6"}
# Submit codes of the protocol: 1 success, 21 already exists, 22 queued: each carries the task id.
ACCEPTED_CODES = (1, 21, 22)
TERMINAL = frozenset({"SUCCESS", "FAILURE", "CANCEL"})
# Prompt parameters the spec sets; spec.options may add any other (stylize, chaos, quality, ...).
RESERVED_PARAMS = frozenset({"ar", "aspect", "seed", "no", "v", "version", "niji"})
_PARAM = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


class MidjourneyProvider(Provider):
    """Midjourney through a midjourney-proxy server. MIDJOURNEY_BASE_URL, MIDJOURNEY_API_KEY."""

    name = "midjourney"
    models: ClassVar[dict[str, Capabilities]] = {
        model: Capabilities(seed=True, negative_prompt=True, webhook=True) for model in MODEL_FLAGS
    }

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        poll_interval: float | None = None,
        poll_timeout: float | None = None,
        timeout: float = 60.0,
    ) -> None:
        """`webhook_url`: this provider's public callback URL; None reads IMAGEN_WEBHOOK_URL, "" polls only.
        `webhook_secret`: the key of the callback URL's token; None reads IMAGEN_WEBHOOK_SECRET."""
        self._api_key = api_key if api_key is not None else os.environ.get("MIDJOURNEY_API_KEY")
        self.base_url = (base_url or os.environ.get("MIDJOURNEY_BASE_URL") or "").rstrip("/") or None
        self.webhook_url = (webhook_url if webhook_url is not None else _default_webhook_url()) or None
        self._webhook_secret = webhook_secret if webhook_secret is not None else webhook_secrets().get("midjourney")
        if self.webhook_url and not self._webhook_secret:
            log.warning("IMAGEN_WEBHOOK_URL is set but IMAGEN_WEBHOOK_SECRET is not: Midjourney tasks are polled")
        interval, cap = poll_settings()
        self.poll_interval = poll_interval if poll_interval is not None else interval
        self.poll_timeout = poll_timeout if poll_timeout is not None else cap
        self.timeout = timeout

    def check(self, spec: ImagePromptSpec, model: str) -> None:
        super().check(spec, model)
        problems = []
        for key, value in spec.options.items():
            if not _PARAM.match(key) or key in RESERVED_PARAMS:
                problems.append(f"spec.options.{key}: not a Midjourney parameter you may set here")
            elif not isinstance(value, str | int | float | bool) or (isinstance(value, str) and "--" in value):
                problems.append(f"spec.options.{key}: must be a plain number, word or true")
        if problems:
            raise SpecError("; ".join(problems))

    def unavailable_reason(self) -> str | None:
        return None if self.base_url else "MIDJOURNEY_BASE_URL is not set (the URL of your midjourney-proxy server)"

    async def generate(self, request: GenerationRequest, ctx: JobContext) -> ProviderResult:
        async with self._client() as http:
            task: dict[str, Any] | None = None
            task_id = ctx.job.provider_job_id
            if task_id:
                task = await self._fetch(http, task_id)
                if task is None or task.get("status") in ("FAILURE", "CANCEL"):
                    log.info("job=%s task %s is %s; submitting anew", ctx.job.id, task_id, _status(task) or "gone")
                    task, task_id = None, None
                else:
                    log.info("job=%s resuming Midjourney task %s (%s)", ctx.job.id, task_id, _status(task))
            if task_id is None:
                task_id = await self._submit(http, request, ctx)
                await ctx.set_provider_job_id(task_id)
            task = await self._wait(http, ctx, task_id, task)
            status = _status(task)
            if status == "FAILURE":
                reason = " ".join(str(task.get("failReason") or "no reason given").split())[:500]
                raise ProviderRejected(f"Midjourney failed task {task_id}: {reason}")
            if status == "CANCEL":
                raise ProviderRejected(f"Midjourney task {task_id} was cancelled on the proxy")
            image_url = task.get("imageUrl")
            if not isinstance(image_url, str) or not image_url:
                raise ProviderUnavailable(f"Midjourney task {task_id} succeeded without an imageUrl")
            data = await download_output(http, image_url, what="Midjourney", headers=self._auth_for(image_url))
        return ProviderResult(GeneratedImage(data, seed=request.spec.seed), usage={"images": 1, "task_id": task_id})

    # -- steps -----------------------------------------------------------------------------------

    async def _submit(self, http: httpx.AsyncClient, request: GenerationRequest, ctx: JobContext) -> str:
        body: dict[str, Any] = {"prompt": build_prompt(request), "state": str(ctx.job.id)}
        if self.webhook_url and self._webhook_secret:
            body["notifyHook"] = signed_callback_url(self.webhook_url, self._webhook_secret, self.name, ctx.job.id)
        resp = await send(http.post("/mj/submit/imagine", json=body, headers=self._auth()), WHO)
        if resp.status_code >= 300:
            _raise_for(resp)
        answer = json_object(resp, WHO)
        code = answer.get("code")
        result = answer.get("result")
        description = " ".join(str(answer.get("description") or "").split())[:300]
        if code in ACCEPTED_CODES and result not in (None, ""):
            log.info("job=%s submitted Midjourney task %s (code %s)", ctx.job.id, result, code)
            return str(result)
        if code == 23:
            raise RateLimited(f"the Midjourney proxy's queue is full (code 23): {description}")
        if code == 24:
            properties = answer.get("properties")
            banned = properties.get("bannedWord") if isinstance(properties, dict) else None
            word = f" ({banned})" if banned else ""
            raise ProviderRejected(f"Midjourney refuses the prompt: it contains a banned word{word}; rephrase it")
        if code == 9:
            raise ProviderUnavailable(f"the Midjourney proxy failed (code 9): {description}")
        raise ProviderRejected(f"the Midjourney proxy refused the task (code {code}): {description}")

    async def _wait(
        self, http: httpx.AsyncClient, ctx: JobContext, task_id: str, task: dict[str, Any] | None
    ) -> dict[str, Any]:
        started = time.monotonic()
        deadline = poll_deadline(ctx, self.poll_timeout)
        reported: float | None = None
        while True:
            if task is not None:
                reported = await self._report(ctx, task, reported)
                if _status(task) in TERMINAL:
                    return task
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProviderUnavailable(
                    f"Midjourney task {task_id} did not finish within {time.monotonic() - started:.0f} s "
                    "of this attempt; a retry resumes it"
                )
            # A notifyHook delivery wakes us at once; none within the interval: poll anyway.
            if self.webhook_url and self._webhook_secret:
                await ctx.wait_for_event("webhook", min(self.poll_interval, remaining))
            else:
                await asyncio.sleep(min(self.poll_interval, remaining))
            task = await self._fetch(http, task_id)
            if task is None:
                raise ProviderUnavailable(f"the Midjourney proxy no longer knows task {task_id}; a retry submits anew")

    async def _report(self, ctx: JobContext, task: dict[str, Any], reported: float | None) -> float | None:
        event = midjourney_event(task)
        progress = 1.0 if event["status"] == "SUCCESS" else event.get("progress")
        if progress is None or progress == reported or event["status"] in ("FAILURE", "CANCEL"):
            return reported
        await ctx.progress(progress, f"{event['status'].lower().replace('_', ' ')} {round(progress * 100)}%")
        return float(progress)

    async def _fetch(self, http: httpx.AsyncClient, task_id: str) -> dict[str, Any] | None:
        """The task, or None when the proxy does not know it (it answers an empty body or null)."""
        resp = await send(http.get(f"/mj/task/{task_id}/fetch", headers=self._auth()), WHO)
        if resp.status_code == 404:
            return None
        if resp.status_code >= 300:
            _raise_for(resp)
        if not resp.content.strip() or resp.content.strip() == b"null":
            return None
        return json_object(resp, WHO)

    # -- HTTP --------------------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"mj-api-secret": self._api_key} if self._api_key else {}

    def _auth_for(self, url: str) -> dict[str, str] | None:
        # The secret goes to the proxy only (some serve images themselves), never to a CDN.
        assert self.base_url is not None
        return self._auth() if httpx.URL(url).host == httpx.URL(self.base_url).host else None

    def _client(self) -> httpx.AsyncClient:
        if not self.base_url:
            raise ConfigError(
                "MIDJOURNEY_BASE_URL is not set; point it at your midjourney-proxy server, e.g. http://localhost:8080"
            )
        return httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(self.timeout, connect=10.0), follow_redirects=True
        )


def build_prompt(request: GenerationRequest) -> str:
    """The prompt with Midjourney's parameters: --ar, --no, --seed, the options, and the model's version."""
    spec = request.spec
    parts = [" ".join(request.prompt.split())]
    ratio = spec.aspect_ratio
    if ratio is None and request.width and request.height:
        divisor = math.gcd(request.width, request.height)
        ratio = f"{request.width // divisor}:{request.height // divisor}"
    if ratio is not None:
        parts.append(f"--ar {ratio}")
    if spec.negative_prompt:
        parts.append(f"--no {' '.join(spec.negative_prompt.replace('--', ' ').split())}")
    if spec.seed is not None:
        parts.append(f"--seed {spec.seed}")
    for key, value in spec.options.items():
        if value is True:
            parts.append(f"--{key}")
        elif value is not False:
            parts.append(f"--{key} {value}")
    parts.append(MODEL_FLAGS[request.model])
    return " ".join(parts)


def _default_webhook_url() -> str | None:
    return webhook_url("midjourney")


def _status(task: dict[str, Any] | None) -> str:
    return str(task.get("status") or "") if task else ""


def _raise_for(resp: httpx.Response) -> NoReturn:
    detail = " ".join(resp.text.split())[:300] or resp.reason_phrase
    refused = f"{WHO} refused the secret ({resp.status_code}); check MIDJOURNEY_API_KEY"
    raise_for_status(resp, WHO, detail, {401: refused, 403: refused})
