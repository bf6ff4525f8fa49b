"""What the service accepts: the job and canvas bodies (pydantic, unknown fields refused) and the
query parameters of the list routes, each error naming its field and the fix."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InvalidField, InvalidJSON, PayloadTooLarge, UnknownField
from ..scheduling import MAX_PRIORITY, MIN_PRIORITY
from ..spec import ImagePromptSpec

MAX_BODY_BYTES = 1024 * 1024
MAX_NODE_DATA_CHARS = 65536  # the check on imagen.canvas_nodes.data
# A Generate's graph: the node and the sources of the edges into it.
MAX_GENERATE_NODES = 500
STATUSES = ("pending", "running", "done", "failed", "cancelled")
SPEC_FIELDS = tuple(name for name in ImagePromptSpec.model_fields if name != "prompt")


# Bodies are validated strictly, as JSON: a seed of "7" is a wrong type, not a 7.
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)


class JobCreate(BaseModel):
    """`POST jobs`: the job's fields at top level; everything but `prompt` has a default."""

    model_config = _STRICT

    prompt: str
    provider: str | None = Field(default=None, min_length=1, max_length=40)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    style_modifiers: list[str] = Field(default_factory=list)
    negative_prompt: str | None = None
    size: str | None = None
    aspect_ratio: str | None = None
    quality: str | None = None
    seed: int | None = None
    previous_image_id: uuid.UUID | None = None
    n: int = 1
    options: dict[str, Any] = Field(default_factory=dict)
    canvas_id: uuid.UUID | None = None
    node_id: str | None = Field(default=None, min_length=1, max_length=200)
    group_id: uuid.UUID | None = None
    # 0–99 interactive, 100–199 batch (imagen_worker.scheduling); unset: the transport's default.
    priority: int | None = Field(default=None, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    max_attempts: int = Field(default=3, ge=1, le=10)

    def spec_data(self) -> dict[str, Any]:
        """The ImagePromptSpec fields, for parse_spec (which validates their values)."""
        return {"prompt": self.prompt, **{name: getattr(self, name) for name in SPEC_FIELDS}}


class NodeIn(BaseModel):
    model_config = _STRICT

    id: str = Field(min_length=1, max_length=200)
    type: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    position_x: float = 0.0
    position_y: float = 0.0
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("position_x", "position_y")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("data")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value, ensure_ascii=False))  # as jsonb prints it, which the check measures
        if size > MAX_NODE_DATA_CHARS:
            raise ValueError(
                f"is {size} characters of JSON; the limit is {MAX_NODE_DATA_CHARS}: keep images in storage "
                "and refer to them by job or image id"
            )
        return value


class EdgeIn(BaseModel):
    model_config = _STRICT

    id: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=200)
    target: str = Field(min_length=1, max_length=200)
    source_handle: str | None = Field(default=None, max_length=200)
    target_handle: str | None = Field(default=None, max_length=200)


class Viewport(BaseModel):
    """Where the canvas is panned and how far it is zoomed (React Flow's); `{}` is the default view."""

    model_config = _STRICT

    x: float = 0.0
    y: float = 0.0
    zoom: float = Field(default=1.0, gt=0, le=100)

    @field_validator("x", "y", "zoom")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class CanvasSave(BaseModel):
    """`PUT canvases/{id}`: the whole graph, with the version it was based on (0: a new canvas)."""

    model_config = _STRICT

    version: int = Field(ge=0)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    viewport: Viewport | None = None
    nodes: list[NodeIn] = Field(default_factory=list, max_length=5000)
    edges: list[EdgeIn] = Field(default_factory=list, max_length=20000)

    def check_graph(self) -> None:
        """Node ids unique; every edge joins two nodes of this canvas; edge ids unique."""
        ids: set[str] = set()
        for i, node in enumerate(self.nodes):
            if node.id in ids:
                raise InvalidField(
                    f"nodes[{i}].id: {node.id!r} is used by two nodes; give each node its own id",
                    field=f"nodes[{i}].id",
                )
            ids.add(node.id)
        edge_ids: set[str] = set()
        for i, edge in enumerate(self.edges):
            if edge.id in edge_ids:
                raise InvalidField(f"edges[{i}].id: {edge.id!r} is used by two edges", field=f"edges[{i}].id")
            edge_ids.add(edge.id)
            for end in ("source", "target"):
                if getattr(edge, end) not in ids:
                    raise InvalidField(
                        f"edges[{i}].{end}: no node {getattr(edge, end)!r} in this canvas; "
                        "an edge must join two of its nodes",
                        field=f"edges[{i}].{end}",
                    )


class GenerateGraph(BaseModel):
    """`POST canvases/{id}/nodes/{node_id}/generate`: what one Generate of an image node needs of the
    canvas as the caller holds it (which may be newer than the stored one): the node, the edges into
    it and their source nodes (imagen_worker.service.generate checks that it is no more than that)."""

    model_config = _STRICT

    nodes: list[NodeIn] = Field(min_length=1, max_length=MAX_GENERATE_NODES)
    edges: list[EdgeIn] = Field(default_factory=list, max_length=MAX_GENERATE_NODES - 1)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error(exc: ValidationError, model: type[BaseModel]) -> InvalidField | UnknownField:
    """The first error of a pydantic validation as the service's error, naming the field."""
    err = exc.errors()[0]
    field = _loc(tuple(err["loc"])) or "body"
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        return UnknownField(f"{field}: is not a field here; the fields are {allowed}", field=field)
    if err["type"] == "missing":
        return InvalidField(f"{field}: is required", field=field)
    message = str(err["msg"]).removeprefix("Value error, ")
    return InvalidField(f"{field}: {message}", field=field)


def parse_body(raw: bytes | str | Mapping[str, Any] | None, model: type[BaseModel]) -> Any:
    """A request body as `model`: bytes or text are JSON (at most MAX_BODY_BYTES); a mapping (the kernel
    transport's, the notebook API's) is checked as the same JSON would be."""
    if raw is None or isinstance(raw, bytes | str):
        if raw is None or not raw:
            raise InvalidJSON("the body is empty; send a JSON object")
        if len(raw) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidJSON(f"the body is not JSON ({exc}); send a JSON object") from None
        text = raw
    else:
        data = dict(raw)
        try:
            text = json.dumps(data, default=str)
        except (TypeError, ValueError) as exc:
            raise InvalidJSON(f"the body cannot be sent as JSON ({exc})") from None
        if len(text) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is {len(text)} bytes; the limit is {MAX_BODY_BYTES}")
    if not isinstance(data, dict):
        raise InvalidJSON(f"the body is a JSON {type(data).__name__}; send a JSON object")
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise validation_error(exc, model) from None


def query_uuid(query: Mapping[str, str], name: str) -> uuid.UUID | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidField(f"{name}: {raw[:60]!r} is not a UUID", field=name) from None


def query_str(query: Mapping[str, str], name: str, *, max_length: int = 200) -> str | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_length:
        raise InvalidField(f"{name}: longer than {max_length} characters", field=name)
    return raw


def query_int(query: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidField(f"{name}: {raw[:30]!r} is not a whole number", field=name) from None
    if not minimum <= value <= maximum:
        raise InvalidField(f"{name}: {value} is out of range; use {minimum} to {maximum}", field=name)
    return value


def query_status(query: Mapping[str, str]) -> str | None:
    status = query_str(query, "status")
    if status is not None and status not in STATUSES:
        raise InvalidField(f"status: {status!r} is not a status; use one of {', '.join(STATUSES)}", field="status")
    return status


ImageVariant = Literal["thumbnail", "full"]


def query_variant(query: Mapping[str, str]) -> ImageVariant:
    variant = query.get("variant") or "full"
    if variant not in ("thumbnail", "full"):
        raise InvalidField(f"variant: {variant!r} must be thumbnail or full", field="variant")
    return "thumbnail" if variant == "thumbnail" else "full"
