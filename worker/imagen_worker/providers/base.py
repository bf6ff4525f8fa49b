"""The one interface every image provider implements, and the capability table the spec is checked against."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import SpecError
from ..spec import ImagePromptSpec

if TYPE_CHECKING:
    from ..queue import JobContext


@dataclass(frozen=True)
class Capabilities:
    """What a provider's model accepts. Empty tuples mean "any value the spec format allows"."""

    sizes: tuple[str, ...] = ()
    aspect_ratios: tuple[str, ...] = ()
    qualities: tuple[str, ...] = ()
    seed: bool = False
    negative_prompt: bool = False
    edit: bool = False
    webhook: bool = False
    cancel: bool = False
    max_side: int = 4096
    default_size: str | None = None
    price_usd: Decimal | None = None
    # The longest prompt the model takes, in characters (the enriched prompt: style modifiers
    # included); never more than the 32,000 the job row holds.
    max_prompt_chars: int = 32000

    def as_dict(self) -> dict[str, Any]:
        return {
            "sizes": list(self.sizes),
            "aspect_ratios": list(self.aspect_ratios),
            "qualities": list(self.qualities),
            "seed": self.seed,
            "negative_prompt": self.negative_prompt,
            "edit": self.edit,
            "webhook": self.webhook,
            "cancel": self.cancel,
            "max_side": self.max_side,
            "default_size": self.default_size,
            "max_prompt_chars": self.max_prompt_chars,
            "price_usd": str(self.price_usd) if self.price_usd is not None else None,
        }


@dataclass(frozen=True)
class GenerationRequest:
    """What the pipeline hands a provider: the validated spec and the enriched prompt."""

    spec: ImagePromptSpec
    model: str
    prompt: str
    width: int | None = None
    height: int | None = None
    previous_image: bytes | None = None


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    seed: int | None = None


@dataclass(frozen=True)
class ProviderResult:
    image: GeneratedImage
    usage: dict[str, Any] = field(default_factory=dict)
    cost_usd: Decimal | None = None


class Provider(abc.ABC):
    """An image provider. `generate` returns bytes, or raises a classified JobError."""

    name: ClassVar[str]
    models: ClassVar[dict[str, Capabilities]]

    @property
    def default_model(self) -> str:
        """The model a job gets when it names none: the first of the table."""
        return next(iter(self.models))

    def unavailable_reason(self) -> str | None:
        """Why this provider cannot run jobs in this process now (a missing key or endpoint), or None."""
        return None

    def capabilities(self, model: str) -> Capabilities:
        try:
            return self.models[model]
        except KeyError:
            raise SpecError(
                f"model: {model!r} is not a model of provider {self.name!r}; the models are {', '.join(self.models)}"
            ) from None

    def check(self, spec: ImagePromptSpec, model: str) -> None:
        """Refuse, before any call, a spec this provider's model cannot honour."""
        caps = self.capabilities(model)
        problems: list[str] = []
        if len(spec.prompt) > caps.max_prompt_chars:
            problems.append(
                f"spec.prompt: {len(spec.prompt)} characters is over the {caps.max_prompt_chars} that "
                f"{self.name}/{model} takes; shorten it"
            )
        if spec.size is not None:
            w, h = spec.dimensions or (0, 0)
            if caps.sizes and spec.size not in caps.sizes:
                problems.append(
                    f"spec.size: {spec.size} is not offered by {self.name}/{model}; use one of {', '.join(caps.sizes)}"
                )
            elif max(w, h) > caps.max_side:
                problems.append(f"spec.size: {spec.size} exceeds {caps.max_side} px on a side for {self.name}/{model}")
        if spec.aspect_ratio is not None and caps.aspect_ratios and spec.aspect_ratio not in caps.aspect_ratios:
            problems.append(
                f"spec.aspect_ratio: {spec.aspect_ratio} is not offered by {self.name}/{model}; use one of {', '.join(caps.aspect_ratios)}"
            )
        if spec.quality is not None and spec.quality not in caps.qualities:
            allowed = ", ".join(caps.qualities) or "none (leave it unset)"
            problems.append(f"spec.quality: {spec.quality} is not offered by {self.name}/{model}; use one of {allowed}")
        if spec.seed is not None and not caps.seed:
            problems.append(f"spec.seed: {self.name}/{model} does not take a seed; leave it unset")
        if spec.previous_image_id is not None and not caps.edit:
            problems.append(f"spec.previous_image_id: {self.name}/{model} cannot refine a previous image")
        if problems:
            raise SpecError("; ".join(problems))

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest, ctx: JobContext) -> ProviderResult:
        """Make one image."""

    async def cancel(self, ctx: JobContext) -> None:  # noqa: B027 - optional upstream cancel
        """Called when the handler is stopped during `generate` (`ctx.stop_reason` says why): cancel the
        job upstream where the provider can and where the job will not be resumed. The default has
        nothing to cancel."""

    async def aclose(self) -> None:  # noqa: B027 - optional: providers holding HTTP clients close them
        """Release network clients; called once when the worker stops."""
