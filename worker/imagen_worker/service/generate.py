"""One Generate of a canvas image node: the `POST jobs` bodies it queues (docs/api.md, Generate).

The canvas view's Generate button (and Ctrl/Cmd+Enter, Regenerate), the kernel transport and
`Canvas.generate()` all reach `Service.generate_node`, which checks the graph with `node_inputs`,
resolves the image the node refines from under RLS and builds the bodies here, with
`node_job_bodies`: a pure function of the node, its inputs, the refined image and the model's
capabilities. Nothing here touches the database.

What a node generates with:

- its prompt: the text of the prompt nodes connected to it (trimmed, the non-empty ones joined with
  ", ", their style modifiers once each, in edge order), else its own; a refinement with neither
  keeps the prompt (and style modifiers) that made the image it refines;
- `previous_image_id`: the image of the current job of the image node connected to it (the first
  such edge), which must be done;
- its spec: size (else aspect ratio), quality, provider options; the negative prompt and the seed
  only where the model takes them; one body per variant, the seed + i for variant i when locked;
- `canvas_id`, `node_id` and one `group_id` shared by the variants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidField
from ..providers.base import Capabilities

MAX_VARIANTS = 4
SEED_RANGE = 2**32


@dataclass(frozen=True)
class ImageNodeSpec:
    """The fields of an image node's data that a Generate reads (docs/api.md, Canvas)."""

    prompt: str = ""
    provider: str | None = None
    model: str | None = None
    size: str | None = None
    aspect_ratio: str | None = None
    quality: str | None = None
    seed: int | None = None
    seed_locked: bool = False
    negative_prompt: str | None = None
    variants: int = 1
    options: dict[str, Any] | None = None


@dataclass(frozen=True)
class PromptInput:
    """A prompt node connected to the image node."""

    node_id: str
    text: str
    style_modifiers: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeInputs:
    """An image node and what feeds it, checked (see `node_inputs`)."""

    node_id: str
    node: ImageNodeSpec
    prompts: tuple[PromptInput, ...] = ()
    # The image node it refines from (the first image → image edge into it), and that node's current job.
    refines: str | None = None
    refines_job: str | None = None
    # Where the refined node's current_job_id is in the request (for an error naming it).
    refines_field: str | None = None


@dataclass(frozen=True)
class SourceImage:
    """What made the image a node refines from: its image (None while not done), prompt and modifiers."""

    image_id: str | None
    prompt: str
    style_modifiers: tuple[str, ...] = field(default_factory=tuple)


def needed_graph(
    nodes: Sequence[Mapping[str, Any]], edges: Sequence[Mapping[str, Any]], node_id: str
) -> dict[str, list[dict[str, Any]]]:
    """What a Generate of `node_id` needs of a canvas: the node, the edges into it and their sources."""
    into = [dict(e) for e in edges if e.get("target") == node_id]
    wanted = {node_id} | {str(e.get("source")) for e in into}
    kept = [dict(n) for n in nodes if n.get("id") in wanted]
    ids = {n["id"] for n in kept}
    return {"nodes": kept, "edges": [e for e in into if e.get("source") in ids]}


def node_inputs(nodes: Sequence[Mapping[str, Any]], edges: Sequence[Mapping[str, Any]], node_id: str) -> NodeInputs:
    """Check a Generate's graph (nodes `{id, type, data}`, edges `{id, source, target}`) and read what
    the node generates with. Refused, naming the field: a missing or non-image node, an edge not into
    it or from a node not sent, a node that is neither it nor a source, data of the wrong type."""
    index: dict[str, int] = {}
    for i, node in enumerate(nodes):
        nid = str(node.get("id"))
        if nid in index:
            raise InvalidField(f"nodes[{i}].id: {nid!r} is used by two nodes", field=f"nodes[{i}].id")
        index[nid] = i
    if node_id not in index:
        raise InvalidField(
            f"nodes: no node {node_id!r}; send the node to generate, the edges into it and their source nodes",
            field="nodes",
        )
    at = index[node_id]
    target = nodes[at]
    if target.get("type") != "image":
        raise InvalidField(
            f"nodes[{at}].type: node {node_id!r} is a {target.get('type')!r} node; only an image node generates "
            "(a prompt node runs the image nodes it feeds: generate each of them)",
            field=f"nodes[{at}].type",
        )
    sources: list[str] = []
    for i, edge in enumerate(edges):
        if edge.get("target") != node_id:
            raise InvalidField(
                f"edges[{i}].target: {edge.get('target')!r} is not node {node_id!r}; send only the edges into it",
                field=f"edges[{i}].target",
            )
        source = str(edge.get("source"))
        if source not in index:
            raise InvalidField(
                f"edges[{i}].source: no node {source!r} among nodes; send the source node of each edge",
                field=f"edges[{i}].source",
            )
        if source not in sources:
            sources.append(source)
    for i, node in enumerate(nodes):
        if node.get("id") != node_id and node.get("id") not in sources:
            raise InvalidField(
                f"nodes[{i}].id: {node.get('id')!r} is neither node {node_id!r} nor the source of an edge into it; "
                "send only those",
                field=f"nodes[{i}].id",
            )
    spec = _image_spec(_data(target, at), f"nodes[{at}].data")
    prompts: list[PromptInput] = []
    refines = refines_job = refines_field = None
    for source in sources:
        i = index[source]
        node, data, where = nodes[i], _data(nodes[i], i), f"nodes[{i}].data"
        if node.get("type") == "prompt":
            prompts.append(
                PromptInput(source, _text(data, "text", where) or "", tuple(_strings(data, "style_modifiers", where)))
            )
        elif node.get("type") == "image" and refines is None:
            refines, refines_job, refines_field = (
                source,
                _text(data, "current_job_id", where),
                f"{where}.current_job_id",
            )
    return NodeInputs(node_id, spec, tuple(prompts), refines, refines_job, refines_field)


def node_job_bodies(
    inputs: NodeInputs,
    *,
    canvas_id: str,
    group_id: str,
    source: SourceImage | None = None,
    capabilities: Capabilities | None = None,
) -> list[dict[str, Any]]:
    """The `POST jobs` bodies of one Generate (see the module docstring). `source`: what made the image
    the node refines from (None when it refines from nothing, or its node shows no job); `capabilities`:
    the node's model's (None: unknown here, every field set is sent and the job's validation decides).
    Raises InvalidField when no job can be made (no prompt, nothing to refine from yet, a model that
    cannot refine), saying what to do."""
    node = inputs.node
    if inputs.prompts:
        prompt = ", ".join(p.text.strip() for p in inputs.prompts if p.text.strip())
        style = list(dict.fromkeys(m for p in inputs.prompts for m in p.style_modifiers))
    else:
        prompt, style = node.prompt, []
    previous = None
    if inputs.refines is not None:
        if source is None or source.image_id is None:
            raise InvalidField(
                f"previous_image_id: image node {inputs.refines!r}, which this node refines from, has no image "
                "yet; generate it first",
                field="previous_image_id",
            )
        if capabilities is not None and not capabilities.edit:
            raise InvalidField(
                f"model: {node.model or 'this model'} cannot refine an image; pick a model that can, or remove "
                f"the edge from {inputs.refines!r}",
                field="model",
            )
        previous = source.image_id
        if not prompt.strip() and not inputs.prompts:
            # A refinement with no prompt of its own keeps the prompt that made the image.
            prompt, style = source.prompt, list(source.style_modifiers)
    if not prompt.strip():
        if inputs.prompts:
            raise InvalidField("prompt: the connected prompt node is empty; type a prompt there", field="prompt")
        raise InvalidField("prompt: type a prompt first", field="prompt")
    seed_taken = capabilities is None or capabilities.seed
    negative_taken = capabilities is None or capabilities.negative_prompt
    negative = (node.negative_prompt or "").strip()
    bodies = []
    for i in range(node.variants):
        body: dict[str, Any] = {"prompt": prompt}
        if node.provider:
            body["provider"] = node.provider
        if node.model:  # none: the provider's default model
            body["model"] = node.model
        if style:
            body["style_modifiers"] = style
        if node.size:
            body["size"] = node.size
        elif node.aspect_ratio:
            body["aspect_ratio"] = node.aspect_ratio
        if node.quality:
            body["quality"] = node.quality
        if negative_taken and negative:
            body["negative_prompt"] = negative
        if seed_taken and node.seed_locked and node.seed is not None:
            body["seed"] = (node.seed + i) % SEED_RANGE
        if previous is not None:
            body["previous_image_id"] = previous
        if node.options:
            body["options"] = dict(node.options)
        body.update(canvas_id=canvas_id, node_id=inputs.node_id, group_id=group_id)
        bodies.append(body)
    return bodies


# -- reading node data (plain JSON, from a view, Python or an older view) ----------------------------


def _data(node: Mapping[str, Any], i: int) -> Mapping[str, Any]:
    data = node.get("data")
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise InvalidField(f"nodes[{i}].data: must be an object", field=f"nodes[{i}].data")
    return data


def _text(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise InvalidField(f"{where}.{key}: must be a string or null", field=f"{where}.{key}")


def _strings(data: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidField(f"{where}.{key}: must be a list of strings", field=f"{where}.{key}")
    return list(value)


def _int(data: Mapping[str, Any], key: str, where: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(f"{where}.{key}: must be a whole number or null", field=f"{where}.{key}")
    return value


def _image_spec(data: Mapping[str, Any], where: str) -> ImageNodeSpec:
    variants = _int(data, "variants", where)
    if variants is not None and not 1 <= variants <= MAX_VARIANTS:
        raise InvalidField(
            f"{where}.variants: {variants} is out of range; use 1 to {MAX_VARIANTS}", field=f"{where}.variants"
        )
    seed_locked = data.get("seed_locked", False)
    if not isinstance(seed_locked, bool):
        raise InvalidField(f"{where}.seed_locked: must be true or false", field=f"{where}.seed_locked")
    options = data.get("options")
    if options is not None and not isinstance(options, Mapping):
        raise InvalidField(f"{where}.options: must be an object or null", field=f"{where}.options")
    return ImageNodeSpec(
        prompt=_text(data, "prompt", where) or "",
        provider=_text(data, "provider", where) or None,
        model=_text(data, "model", where) or None,
        size=_text(data, "size", where) or None,
        aspect_ratio=_text(data, "aspect_ratio", where) or None,
        quality=_text(data, "quality", where) or None,
        seed=_int(data, "seed", where),
        seed_locked=seed_locked,
        negative_prompt=_text(data, "negative_prompt", where),
        variants=variants or 1,
        options=dict(options) if options else None,
    )
