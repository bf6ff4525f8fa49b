"""The image pipeline, one job: validate → enrich → provider → sniff/thumbnail → store → images row."""

from __future__ import annotations

import asyncio
import uuid

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from .errors import PermanentJobError, StorageUnavailable
from .images import process_image
from .limits import provider_slot
from .pricing import list_price
from .providers import Capabilities, GenerationRequest, ProviderRegistry
from .queries import q
from .queue import ImageRecord, JobContext, JobResult
from .spec import ImagePromptSpec
from .storage import Storage

STORAGE_ATTEMPTS = 3


def enrich_prompt(spec: ImagePromptSpec, caps: Capabilities) -> str:
    """The prompt the provider sees: style modifiers appended; the negative prompt folded in where
    the provider has no parameter for it."""
    prompt = spec.prompt.strip()
    if spec.style_modifiers:
        prompt = f"{prompt}, {', '.join(m.strip() for m in spec.style_modifiers)}"
    if spec.negative_prompt and not caps.negative_prompt:
        prompt = f"{prompt}. Avoid: {spec.negative_prompt.strip()}"
    return prompt


def object_keys(owner_user_id: uuid.UUID, job_id: uuid.UUID, extension: str) -> tuple[str, str]:
    """Deterministic keys, so a retried job overwrites rather than duplicates."""
    return f"{owner_user_id}/{job_id}.{extension}", f"{owner_user_id}/{job_id}.thumb.webp"


class ImagePipeline:
    """The job handler that turns a queued ImagePromptSpec into a stored image and an images row."""

    def __init__(self, storage: Storage, providers: ProviderRegistry | None = None) -> None:
        self.storage = storage
        self.providers = providers or ProviderRegistry()

    async def __call__(self, ctx: JobContext) -> JobResult:
        job = ctx.job
        spec = ImagePromptSpec.from_job(job.prompt, job.spec)
        provider = self.providers.get(job.provider)
        provider.check(spec, job.model)
        caps = provider.capabilities(job.model)
        size = spec.dimensions or (None if spec.aspect_ratio else _parse(caps.default_size))
        previous = await self._previous_image(ctx, spec.previous_image_id)
        request = GenerationRequest(
            spec=spec,
            model=job.model,
            prompt=enrich_prompt(spec, caps),
            width=size[0] if size else None,
            height=size[1] if size else None,
            previous_image=previous,
        )
        # Priced before the call, so a malformed IMAGEN_PRICES_FILE fails the job before any spend.
        list_usd = list_price(
            job.provider,
            job.model,
            quality=spec.quality,
            size=f"{request.width}x{request.height}" if request.width and request.height else None,
        )
        try:
            async with provider_slot(ctx):
                result = await provider.generate(request, ctx)
        except asyncio.CancelledError:
            await asyncio.shield(provider.cancel(ctx))
            raise
        if result.usage:
            # Usage per provider/model (tokens, images, credits) joins the job's audit trail.
            await ctx.event("log", {"usage": result.usage})
        image = await asyncio.to_thread(process_image, result.image.data)
        key, thumb_key = object_keys(job.owner_user_id, job.id, image.extension)
        await self._put(key, image.data, image.content_type)
        await self._put(thumb_key, image.thumbnail, "image/webp")
        return JobResult(
            image=ImageRecord(
                bucket=self.storage.bucket,
                path=key,
                thumb_path=thumb_key,
                content_type=image.content_type,
                width=image.width,
                height=image.height,
                bytes=len(image.data),
                sha256=image.sha256,
                provider=job.provider,
                model=job.model,
                seed=result.image.seed,
            ),
            # The provider's own figure, else the price table, else the provider's declared price.
            cost_usd=next((c for c in (result.cost_usd, list_usd, caps.price_usd) if c is not None), None),
        )

    def available_providers(self) -> list[str]:
        """The providers this pipeline can run jobs of here and now (installed, configured)."""
        return [name for name in self.providers.names() if self.providers.unavailable_reason(name) is None]

    async def aclose(self) -> None:
        """Close provider and storage clients (the worker calls this when it stops)."""
        await self.providers.aclose()
        await self.storage.aclose()

    async def _put(self, key: str, data: bytes, content_type: str) -> None:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(STORAGE_ATTEMPTS),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception_type(StorageUnavailable),
            reraise=True,
        ):
            with attempt:
                await self.storage.put(key, data, content_type)

    async def _previous_image(self, ctx: JobContext, image_id: uuid.UUID | None) -> bytes | None:
        if image_id is None:
            return None
        row = await ctx.pool.fetchrow(q("owned_image"), image_id, ctx.job.owner_user_id)
        if row is None:
            raise PermanentJobError(f"spec.previous_image_id: image {image_id} not found among this user's images")
        return await self.storage.get(row["path"])


def _parse(size: str | None) -> tuple[int, int] | None:
    if not size:
        return None
    w, h = size.split("x")
    return int(w), int(h)
