"""The one builder of a Generate's jobs (imagen_worker.service.generate): what a canvas image node queues,
from its data, the prompt nodes and image node connected to it, and its model's capabilities. These are
the cases the view's TypeScript builder (js/src/state/generate.ts) and `canvas.py`'s node_job_bodies were
tested for, before both were replaced by this one."""

from __future__ import annotations

from typing import Any

import pytest

from imagen_worker.errors import InvalidField
from imagen_worker.providers.base import Capabilities
from imagen_worker.service.generate import SourceImage, needed_graph, node_inputs, node_job_bodies

from ..helpers import edge, image, prompt

LOCAL = Capabilities(aspect_ratios=("1:1",), seed=True, negative_prompt=True, edit=True, max_prompt_chars=100)
DALLE = Capabilities(sizes=("1024x1024",), qualities=("hd",), seed=False, negative_prompt=False, edit=False)


def bodies(
    nodes: list[dict[str, Any]],
    edges: list[dict[str, Any]] | None = None,
    node_id: str = "img",
    *,
    source: SourceImage | None = None,
    capabilities: Capabilities | None = LOCAL,
) -> list[dict[str, Any]]:
    inputs = node_inputs(nodes, edges or [], node_id)
    return node_job_bodies(inputs, canvas_id="canvas-1", group_id="group-1", source=source, capabilities=capabilities)


def refused(field: str, *args: Any, **kw: Any) -> str:
    with pytest.raises(InvalidField) as err:
        bodies(*args, **kw)
    assert err.value.field == field, err.value
    return str(err.value)


def test_one_body_per_variant_in_one_group_naming_the_node_and_canvas_with_defaults_left_out() -> None:
    made = bodies([image("img", prompt="a fox", variants=3)])
    assert (
        made
        == [
            {
                "prompt": "a fox",
                "provider": "local",
                "model": "local-v1",
                "canvas_id": "canvas-1",
                "node_id": "img",
                "group_id": "group-1",
            }
        ]
        * 3
    )


def test_with_the_seed_locked_variant_i_uses_seed_plus_i_wrapping_at_2_to_the_32() -> None:
    made = bodies([image("img", prompt="a fox", variants=4, seed=41, seed_locked=True)])
    assert [b["seed"] for b in made] == [41, 42, 43, 44]
    wrapped = bodies([image("img", prompt="a fox", variants=2, seed=2**32 - 1, seed_locked=True)])
    assert [b["seed"] for b in wrapped] == [2**32 - 1, 0]


def test_the_seed_is_left_to_the_provider_when_unlocked_or_unset() -> None:
    assert "seed" not in bodies([image("img", prompt="a fox", seed=41, seed_locked=False)])[0]
    assert "seed" not in bodies([image("img", prompt="a fox", seed=None, seed_locked=True)])[0]


def test_the_prompt_and_style_modifiers_come_from_the_connected_prompt_nodes_in_edge_order() -> None:
    nodes = [
        prompt("p1", " a lighthouse ", ["oil"]),
        prompt("p2", "at dusk", ["oil", "warm"]),
        prompt("p3", "   "),
        image("img", prompt="ignored"),
    ]
    (made,) = bodies(nodes, [edge("p1", "img"), edge("p3", "img"), edge("p2", "img")])
    assert made["prompt"] == "a lighthouse, at dusk"
    assert made["style_modifiers"] == ["oil", "warm"]


def test_a_refinement_takes_previous_image_id_from_the_source_nodes_current_image() -> None:
    nodes = [image("src", current_job_id="job-1"), image("img", prompt="sharper")]
    (made,) = bodies(nodes, [edge("src", "img")], source=SourceImage("img-9", "a harbour", ("ink",)))
    assert made["previous_image_id"] == "img-9"
    assert made["prompt"] == "sharper" and "style_modifiers" not in made


def test_a_refinement_with_no_prompt_of_its_own_keeps_the_prompt_that_made_the_image() -> None:
    nodes = [image("src", current_job_id="job-1"), image("img")]
    (made,) = bodies(nodes, [edge("src", "img")], source=SourceImage("img-3", "a harbour", ("ink",)))
    assert made["prompt"] == "a harbour"
    assert made["style_modifiers"] == ["ink"]
    assert made["previous_image_id"] == "img-3"


def test_the_first_image_edge_is_the_one_refined_from() -> None:
    nodes = [image("a", current_job_id="job-a"), image("b", current_job_id="job-b"), image("img", prompt="x")]
    inputs = node_inputs(nodes, [edge("a", "img"), edge("b", "img")], "img")
    assert (inputs.refines, inputs.refines_job) == ("a", "job-a")


def test_provider_options_set_on_the_node_pass_through() -> None:
    (made,) = bodies([image("img", prompt="a fox", options={"delay_s": 5})])
    assert made["options"] == {"delay_s": 5}


def test_only_fields_the_model_accepts_are_sent_and_size_wins_over_aspect_ratio() -> None:
    node = image(
        "img",
        prompt="a fox",
        provider="openai",
        model="dall-e-3",
        seed=3,
        seed_locked=True,
        negative_prompt="blur",
        size="1024x1024",
        aspect_ratio="1:1",
        quality="hd",
    )
    (made,) = bodies([node], capabilities=DALLE)
    assert made["size"] == "1024x1024" and made["quality"] == "hd"
    assert "seed" not in made and "negative_prompt" not in made and "aspect_ratio" not in made
    (local,) = bodies([image("img", prompt="a fox", negative_prompt="  blur  ", aspect_ratio="1:1")])
    assert local["negative_prompt"] == "blur" and local["aspect_ratio"] == "1:1"
    assert "negative_prompt" not in bodies([image("img", prompt="a fox", negative_prompt="   ")])[0]


def test_unknown_capabilities_send_every_field_set_for_the_jobs_validation_to_judge() -> None:
    (made,) = bodies([image("img", prompt="a fox", seed=3, seed_locked=True, negative_prompt="x")], capabilities=None)
    assert made["seed"] == 3 and made["negative_prompt"] == "x"


def test_a_node_without_a_model_or_provider_lets_the_server_pick_them() -> None:
    (made,) = bodies([{"id": "img", "type": "image", "data": {"prompt": "a fox", "model": "", "provider": None}}])
    assert "model" not in made and "provider" not in made


def test_no_job_is_made_where_none_could_run_and_the_error_says_what_to_do() -> None:
    assert "type a prompt first" in refused("prompt", [image("img", prompt="   ")])
    assert "prompt node is empty" in refused("prompt", [prompt("p", ""), image("img")], [edge("p", "img")])
    nodes = [image("src"), image("img", prompt="x")]
    assert "generate it first" in refused("previous_image_id", nodes, [edge("src", "img")])
    running = SourceImage(None, "a harbour")
    assert "generate it first" in refused("previous_image_id", nodes, [edge("src", "img")], source=running)
    done = SourceImage("img-1", "a harbour")
    message = refused("model", nodes, [edge("src", "img")], source=done, capabilities=DALLE)
    assert "cannot refine" in message


def test_the_graph_is_the_node_the_edges_into_it_and_their_sources_or_a_400_naming_the_field() -> None:
    def bad(nodes: list[dict[str, Any]], edges: list[dict[str, Any]], field: str) -> None:
        with pytest.raises(InvalidField) as err:
            node_inputs(nodes, edges, "img")
        assert err.value.field == field, err.value

    bad([image("other")], [], "nodes")
    bad([prompt("img", "x")], [], "nodes[0].type")
    bad([image("img"), image("img")], [], "nodes[1].id")
    bad([image("img"), image("next")], [edge("img", "next")], "edges[0].target")
    bad([image("img")], [edge("gone", "img")], "edges[0].source")
    bad([image("img"), prompt("loose", "x")], [], "nodes[1].id")
    bad([image("img", variants=5)], [], "nodes[0].data.variants")
    bad([image("img", variants=0)], [], "nodes[0].data.variants")
    bad([image("img", seed="7")], [], "nodes[0].data.seed")
    bad([image("img", seed=True)], [], "nodes[0].data.seed")
    bad([image("img", seed_locked="yes")], [], "nodes[0].data.seed_locked")
    bad([image("img", prompt=["a"])], [], "nodes[0].data.prompt")
    bad([image("img", options=[1])], [], "nodes[0].data.options")
    bad(
        [image("img"), {**prompt("p", "x"), "data": {"style_modifiers": "oil"}}],
        [edge("p", "img")],
        "nodes[1].data.style_modifiers",
    )
    bad(
        [image("img"), {**image("src"), "data": {"current_job_id": 5}}],
        [edge("src", "img")],
        "nodes[1].data.current_job_id",
    )


def test_needed_graph_keeps_only_what_a_generate_of_the_node_reads() -> None:
    nodes = [prompt("p1", "a"), prompt("p2", "b"), image("src"), image("img"), image("next")]
    edges = [edge("p1", "img"), edge("src", "img"), edge("img", "next"), edge("p2", "next")]
    graph = needed_graph(nodes, edges, "img")
    assert [n["id"] for n in graph["nodes"]] == ["p1", "src", "img"]
    assert [e["id"] for e in graph["edges"]] == ["p1-img", "src-img"]
    node_inputs(graph["nodes"], graph["edges"], "img")  # and it passes the check
