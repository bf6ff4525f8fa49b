"""The offline provider: draws a real, deterministic PNG from prompt + seed with Pillow, no network."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import textwrap
from decimal import Decimal
from typing import TYPE_CHECKING, ClassVar

from PIL import Image, ImageDraw, ImageFilter

from .base import Capabilities, GeneratedImage, GenerationRequest, Provider, ProviderResult

if TYPE_CHECKING:
    from ..queue import JobContext

ASPECT_SIZES = {"1:1": (512, 512), "4:3": (640, 480), "3:4": (480, 640), "16:9": (768, 432), "9:16": (432, 768)}


def draw(prompt: str, seed: int, width: int, height: int, previous: bytes | None = None) -> bytes:
    """A deterministic picture of `prompt`: gradient sky, seeded shapes, the prompt's words."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    rng = random.Random(digest)
    top = tuple(rng.randrange(40, 220) for _ in range(3))
    bottom = tuple(rng.randrange(20, 200) for _ in range(3))
    gradient = Image.linear_gradient("L").resize((width, height))
    img = Image.composite(Image.new("RGB", (width, height), bottom), Image.new("RGB", (width, height), top), gradient)
    if previous is not None:
        with Image.open(io.BytesIO(previous)) as prev:
            img = Image.blend(img, prev.convert("RGB").resize((width, height)), 0.5)
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    pen = ImageDraw.Draw(layer)
    for _ in range(6 + rng.randrange(6)):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(max(4, min(width, height) // 12), max(8, min(width, height) // 3))
        colour = (*(rng.randrange(256) for _ in range(3)), rng.randrange(90, 200))
        if rng.random() < 0.5:
            pen.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            pen.regular_polygon((x, y, r), n_sides=rng.randrange(3, 8), rotation=rng.randrange(360), fill=colour)
    img = Image.alpha_composite(img.convert("RGBA"), layer.filter(ImageFilter.GaussianBlur(2)))
    text = ImageDraw.Draw(img)
    wrapped = "\n".join(textwrap.wrap(prompt, width=max(12, width // 14))[:6])
    text.multiline_text(
        (12, 12), wrapped, fill=(255, 255, 255, 235), spacing=4, stroke_width=2, stroke_fill=(0, 0, 0, 200)
    )
    out = io.BytesIO()
    img.convert("RGB").save(out, format="PNG", compress_level=1)
    return out.getvalue()


class LocalProvider(Provider):
    name = "local"
    models: ClassVar[dict[str, Capabilities]] = {
        "local-v1": Capabilities(
            aspect_ratios=tuple(ASPECT_SIZES),
            seed=True,
            negative_prompt=True,
            edit=True,
            cancel=True,
            max_side=2048,
            default_size="512x512",
            price_usd=Decimal("0"),
        )
    }

    async def generate(self, request: GenerationRequest, ctx: JobContext) -> ProviderResult:
        spec = request.spec
        if request.width and request.height:
            width, height = request.width, request.height
        else:
            width, height = ASPECT_SIZES.get(spec.aspect_ratio or "1:1", (512, 512))
        seed = (
            spec.seed
            if spec.seed is not None
            else int.from_bytes(hashlib.sha256(str(ctx.job.id).encode()).digest()[:4], "big")
        )
        delay = float(spec.options.get("delay_s", 0) or 0)
        if delay > 0:
            # A slow offline model, for demos and for cancel/shutdown tests: progress in quarters.
            for quarter in range(1, 4):
                await asyncio.sleep(delay / 4)
                await ctx.progress(quarter / 4, f"step {quarter} of 4")
            await asyncio.sleep(delay / 4)
        data = await asyncio.to_thread(draw, request.prompt, seed, width, height, request.previous_image)
        return ProviderResult(GeneratedImage(data, seed=seed), usage={"images": 1}, cost_usd=Decimal("0"))
