"""One Generate of a canvas image node through the service (`Service.generate_node`) and the shared route
table (`POST canvases/{id}/nodes/{node_id}/generate`), on real Postgres: the graph as the caller holds it,
the image it refines from resolved under RLS, every variant queued in one transaction, idempotent retries.
The bodies themselves: tests/unit/test_generate_node_bodies.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from imagen_worker.db import create_pool
from imagen_worker.errors import InvalidField, NotFound, TooManyPending, UnknownField
from imagen_worker.service import Request, Router, Service, ServiceConfig
from imagen_worker.storage import LocalStorage

from ..helpers import edge, image, prompt, wait_until

pytestmark = pytest.mark.asyncio

OWNER = uuid.UUID("00000000-0000-4000-8000-00000000a001")
OTHER = uuid.UUID("00000000-0000-4000-8000-00000000a002")


@pytest_asyncio.fixture
async def service(db_url: str, tmp_path: Path) -> AsyncIterator[Service]:
    pool = await create_pool(db_url, min_size=1, max_size=4)
    storage = LocalStorage(tmp_path / "store", signing_key=b"test-signing-key-0123456789")
    try:
        yield Service(pool, storage, config=ServiceConfig(max_pending=6))
    finally:
        await pool.close()


async def saved_canvas(service: Service, nodes: list[dict[str, Any]], edges: list[dict[str, Any]] | None = None) -> str:
    canvas_id = str(uuid.uuid4())
    await service.save_canvas(OWNER, canvas_id, {"version": 0, "nodes": nodes, "edges": edges or []})
    return canvas_id


async def finished_job(
    db: asyncpg.Connection, owner: uuid.UUID, prompt_text: str, spec: dict[str, Any]
) -> tuple[str, str]:
    """A done job of `owner` with its image, written directly (as the table owner): (job id, image id)."""
    job_id = await db.fetchval(
        "insert into imagen.jobs (owner_user_id, prompt, spec) values ($1, $2, $3) returning id",
        owner,
        prompt_text,
        spec,
    )
    image_id = await db.fetchval(
        "insert into imagen.images (owner_user_id, job_id, bucket, path, content_type, width, height, bytes, sha256) "
        "values ($1, $2, 'images', $3, 'image/png', 1, 1, 1, repeat('0', 64)) returning id",
        owner,
        job_id,
        f"{owner}/{job_id}.png",
    )
    await db.execute(
        "update imagen.jobs set status = 'done', image_id = $2, completed_at = now() where id = $1", job_id, image_id
    )
    return str(job_id), str(image_id)


async def test_a_generate_queues_one_job_per_variant_in_one_group_each_announced_pending(
    service: Service, db: asyncpg.Connection
) -> None:
    graph = {
        "nodes": [image("img", variants=3, seed=10, seed_locked=True), prompt("p", "a lighthouse", ["oil"])],
        "edges": [edge("p", "img")],
    }
    canvas_id = await saved_canvas(service, graph["nodes"], graph["edges"])
    answer = await service.generate_node(OWNER, canvas_id, "img", graph)
    jobs = answer["jobs"]
    assert list(answer) == ["jobs"] and len(jobs) == 3
    assert {j["group_id"] for j in jobs} != {None} and len({j["group_id"] for j in jobs}) == 1
    assert [j["spec"]["seed"] for j in jobs] == [10, 11, 12]
    for job in jobs:
        assert job["prompt"] == "a lighthouse" and job["spec"]["style_modifiers"] == ["oil"]
        assert (job["canvas_id"], job["node_id"], job["status"]) == (canvas_id, "img", "pending")
        assert job["priority"] == 50 and job["image"] is None and "waiting_for_worker" in job  # the one Job shape
    events = await db.fetch(
        "select job_id, payload->>'status' as status from imagen.job_events where kind = 'state' order by id"
    )
    assert sorted(str(e["job_id"]) for e in events) == sorted(j["id"] for j in jobs)
    assert {e["status"] for e in events} == {"pending"}


async def test_the_graph_sent_wins_over_the_stored_canvas_which_must_exist(service: Service) -> None:
    canvas_id = await saved_canvas(service, [image("img", prompt="as saved")])
    (job,) = (await service.generate_node(OWNER, canvas_id, "img", {"nodes": [image("img", prompt="typed")]}))["jobs"]
    assert job["prompt"] == "typed"
    # A node the stored canvas does not have yet (added in the view, its save still debounced) generates too.
    (new,) = (await service.generate_node(OWNER, canvas_id, "new", {"nodes": [image("new", prompt="fresh")]}))["jobs"]
    assert new["node_id"] == "new"
    # A canvas not saved yet, and another owner's (RLS hides it), are not found.
    for missing in (str(uuid.uuid4()), await _others_canvas(service)):
        with pytest.raises(NotFound) as err:
            await service.generate_node(OWNER, missing, "img", {"nodes": [image("img", prompt="x")]})
        assert err.value.field == "canvas_id"


async def _others_canvas(service: Service) -> str:
    canvas_id = str(uuid.uuid4())
    await service.save_canvas(OTHER, canvas_id, {"version": 0, "nodes": [], "edges": []})
    return canvas_id


async def test_a_refinement_resolves_the_source_nodes_image_under_rls(service: Service, db: asyncpg.Connection) -> None:
    job_id, image_id = await finished_job(db, OWNER, "a harbour", {"style_modifiers": ["ink"]})
    nodes = [image("img"), image("src", current_job_id=job_id)]
    canvas_id = await saved_canvas(service, nodes, [edge("src", "img")])
    graph = {"nodes": nodes, "edges": [edge("src", "img")]}
    (job,) = (await service.generate_node(OWNER, canvas_id, "img", graph))["jobs"]
    assert job["spec"]["previous_image_id"] == image_id
    assert (job["prompt"], job["spec"]["style_modifiers"]) == ("a harbour", ["ink"])

    def refining_from(current_job_id: Any) -> dict[str, Any]:
        return {
            "nodes": [image("img", prompt="sharper"), image("src", current_job_id=current_job_id)],
            "edges": [edge("src", "img")],
        }

    theirs, _ = await finished_job(db, OTHER, "theirs", {})
    pending = await db.fetchval("insert into imagen.jobs (owner_user_id, prompt) values ($1, 'x') returning id", OWNER)
    for current, field, text in (
        (theirs, "previous_image_id", "not among your jobs"),
        (str(pending), "previous_image_id", "generate it first"),
        (None, "previous_image_id", "generate it first"),
        ("not-a-uuid", "nodes[1].data.current_job_id", "not a job id"),
    ):
        with pytest.raises(InvalidField) as err:
            await service.generate_node(OWNER, canvas_id, "img", refining_from(current))
        assert err.value.field == field and text in str(err.value), err.value


async def test_a_repeat_with_the_idempotency_key_returns_the_first_generation_even_when_concurrent(
    service: Service, db: asyncpg.Connection, db_url: str
) -> None:
    graph = {"nodes": [image("img", prompt="a fox", variants=2)]}
    canvas_id = await saved_canvas(service, graph["nodes"])
    first = await service.generate_node(OWNER, canvas_id, "img", graph, idempotency_key="click-1")
    again = await service.generate_node(OWNER, canvas_id, "img", graph, idempotency_key="click-1")
    assert [j["id"] for j in again["jobs"]] == [j["id"] for j in first["jobs"]]
    assert [j["idempotency_key"] for j in first["jobs"]] == ["click-1:0", "click-1:1"]
    # Three repeats at once, each past its check for the key before any has inserted: the table is locked
    # against inserts until all three wait on it, then let go, so two of them meet the key taken at insert.
    blocker = await asyncpg.connect(db_url)
    try:
        hold = blocker.transaction()
        await hold.start()
        await blocker.execute("lock table imagen.jobs in share row exclusive mode")
        racing_tasks = [
            asyncio.ensure_future(service.generate_node(OWNER, canvas_id, "img", graph, idempotency_key="click-2"))
            for _ in range(3)
        ]
        waiting = (
            "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'"
        )
        await wait_until(lambda: _at_least(db, waiting, 3), "three inserts waiting on the lock")
        await hold.commit()
    finally:
        await blocker.close()
    racing = await asyncio.gather(*racing_tasks)
    assert len({tuple(j["id"] for j in answer["jobs"]) for answer in racing}) == 1
    assert await db.fetchval("select count(*) from imagen.jobs") == 4
    pending = "select count(*) from imagen.job_events where kind = 'state'"
    assert await db.fetchval(pending) == 4  # each new job announced once
    with pytest.raises(InvalidField) as err:
        await service.generate_node(OWNER, canvas_id, "img", graph, idempotency_key="k" * 199)
    assert err.value.field == "Idempotency-Key"


async def _at_least(db: asyncpg.Connection, query: str, n: int) -> bool:
    return bool(await db.fetchval(query) >= n)


async def test_all_variants_or_none_at_the_pending_cap_and_a_retry_still_gets_its_jobs(
    service: Service, db: asyncpg.Connection
) -> None:
    graph = {"nodes": [image("img", prompt="a fox", variants=4)]}
    canvas_id = await saved_canvas(service, graph["nodes"])
    first = await service.generate_node(OWNER, canvas_id, "img", graph, idempotency_key="a")
    with pytest.raises(TooManyPending):  # 4 pending + 4 more > the cap of 6
        await service.generate_node(OWNER, canvas_id, "img", graph, idempotency_key="b")
    assert await db.fetchval("select count(*) from imagen.jobs") == 4
    again = await service.generate_node(OWNER, canvas_id, "img", graph, idempotency_key="a")
    assert [j["id"] for j in again["jobs"]] == [j["id"] for j in first["jobs"]]


async def test_a_job_the_model_refuses_is_a_400_naming_the_field_and_queues_nothing(
    service: Service, db: asyncpg.Connection
) -> None:
    canvas_id = await saved_canvas(service, [])

    async def refused(graph: Any, node_id: str = "img") -> InvalidField:
        with pytest.raises(InvalidField) as err:
            await service.generate_node(OWNER, canvas_id, node_id, graph)
        return err.value

    assert (await refused({"nodes": [image("img", prompt="x", model="nope")]})).field == "model"
    assert (await refused({"nodes": [image("img", prompt="x", provider="nope")]})).field == "provider"
    assert (await refused({"nodes": [image("img", prompt="x" * 40000)]})).field == "prompt"
    assert (await refused({"nodes": [image("img", prompt="x", size="huge")]})).field == "size"
    assert (await refused({"nodes": [image("img", prompt="   ")]})).field == "prompt"
    assert (await refused({"nodes": [image("img", prompt="x", variants=9)]})).field == "nodes[0].data.variants"
    assert (await refused({"nodes": []})).field == "nodes"
    assert (
        await refused({"nodes": [image("img", prompt="x")], "edges": [edge("img", "b")]})
    ).field == "edges[0].target"
    with pytest.raises(UnknownField) as unknown:
        await service.generate_node(OWNER, canvas_id, "img", {"nodes": [image("img", prompt="x")], "viewport": {}})
    assert unknown.value.field == "viewport"
    assert await db.fetchval("select count(*) from imagen.jobs") == 0


async def test_the_route_is_in_the_shared_table_with_the_key_header_and_the_error_shape(service: Service) -> None:
    router = Router(service)
    canvas_id = await saved_canvas(service, [image("img")])
    graph = {"nodes": [image("img", prompt="a fox", variants=2)], "edges": []}
    path = f"canvases/{canvas_id}/nodes/img/generate"
    headers = {"idempotency-key": "r-1"}
    made = await router.dispatch(OWNER, Request("POST", path, body=json.dumps(graph).encode(), headers=headers))
    assert made.status == 201 and len(made.body["jobs"]) == 2
    again = await router.dispatch(OWNER, Request("POST", path, body=graph, headers=headers))  # the kernel's dict body
    assert again.status == 201
    assert [j["id"] for j in again.body["jobs"]] == [j["id"] for j in made.body["jobs"]]
    bad = await router.dispatch(OWNER, Request("POST", path, body={"nodes": [image("img", prompt="")]}))
    assert bad.status == 400 and bad.body["error"] == {
        "code": "invalid_field",
        "message": "prompt: type a prompt first",
        "field": "prompt",
    }
    wrong = await router.dispatch(OWNER, Request("GET", path))
    assert wrong.status == 405
    gone = await router.dispatch(OWNER, Request("POST", f"canvases/{uuid.uuid4()}/nodes/img/generate", body=graph))
    assert gone.status == 404 and gone.body["error"]["field"] == "canvas_id"
