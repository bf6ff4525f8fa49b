"""The ImagePromptSpec: what a job asks for, validated before it is queued and again before it runs."""

from __future__ import annotations

import re
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import SpecError

Quality = Literal["auto", "low", "medium", "high", "standard", "hd"]

_SIZE = re.compile(r"^([1-9][0-9]{1,4})x([1-9][0-9]{1,4})$")
_RATIO = re.compile(r"^([1-9][0-9]?):([1-9][0-9]?)$")


class ImagePromptSpec(BaseModel):
    """One image request. `prompt` is stored in `imagen.jobs.prompt`, the rest in `imagen.jobs.spec`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1, max_length=32000)
    style_modifiers: list[str] = Field(default_factory=list, max_length=20)
    negative_prompt: str | None = Field(default=None, max_length=4000)
    size: str | None = None
    aspect_ratio: str | None = None
    quality: Quality | None = None
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    previous_image_id: UUID | None = None
    n: int = Field(default=1, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is blank; describe the image to generate")
        return value

    @field_validator("style_modifiers")
    @classmethod
    def _modifiers_short(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.strip() or len(item) > 200:
                raise ValueError("each style modifier must be 1 to 200 characters")
        return value

    @field_validator("n")
    @classmethod
    def _one_image_per_job(cls, value: int) -> int:
        if value != 1:
            raise ValueError("a job makes one image; queue n jobs (for example with imagen_canvas.sweep) for more")
        return value

    @field_validator("size")
    @classmethod
    def _size_format(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"{value!r} must look like 1024x1024 (width x height in pixels)")
        return value

    @field_validator("aspect_ratio")
    @classmethod
    def _ratio_format(cls, value: str | None) -> str | None:
        if value is not None and not _RATIO.match(value):
            raise ValueError(f"{value!r} must look like 16:9")
        return value

    @property
    def dimensions(self) -> tuple[int, int] | None:
        if self.size is None:
            return None
        w, h = self.size.split("x")
        return int(w), int(h)

    def stored_spec(self) -> dict[str, Any]:
        """The jsonb stored in imagen.jobs.spec: everything but the prompt, defaults left out."""
        return self.model_dump(mode="json", exclude={"prompt"}, exclude_defaults=True)

    @classmethod
    def from_job(cls, prompt: str, spec: dict[str, Any]) -> ImagePromptSpec:
        """Rebuild the spec from a job row, with the same field errors as at submit time."""
        if "prompt" in spec:
            raise SpecError("spec.prompt: the prompt belongs in the job's prompt column, not in spec")
        return parse_spec({**spec, "prompt": prompt})


def parse_spec(data: dict[str, Any]) -> ImagePromptSpec:
    """Validate `data`; a SpecError names every bad field and what it accepts."""
    try:
        return ImagePromptSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "spec"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(ImagePromptSpec.model_fields)
            message = f"is not a spec field; the fields are {allowed}"
        elif err["type"] == "literal_error":
            message = message.replace("Input should be", "must be one of")
        elif err["type"] == "string_too_short":
            message = "is empty; describe the image to generate" if field == "prompt" else "is empty"
        elif err["type"] == "string_too_long":
            limit = (err.get("ctx") or {}).get("max_length")
            message = f"is {len(str(err.get('input', '')))} characters long; the limit is {limit}"
        parts.append(f"spec.{field}: {message.removeprefix('Value error, ')}")
    return "; ".join(parts)
