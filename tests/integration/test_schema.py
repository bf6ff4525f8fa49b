"""The imagen schema on real Postgres: constraints, guards, notifications, RLS, the claim index."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest

from imagen_worker.queries import q

pytestmark = pytest.mark.asyncio

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="


async def insert_job(conn: asyncpg.Connection, owner: uuid.UUID, **cols: Any) -> uuid.UUID:
    cols = {"owner_user_id": owner, "prompt": "a red fox", **cols}
    names = ", ".join(cols)
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    job_id = await conn.fetchval(f"insert into imagen.jobs ({names}) values ({params}) returning id", *cols.values())
    assert isinstance(job_id, uuid.UUID)
    return job_id


async def insert_image(conn: asyncpg.Connection, owner: uuid.UUID, job_id: uuid.UUID) -> uuid.UUID:
    image_id = await conn.fetchval(
        """insert into imagen.images (owner_user_id, job_id, bucket, path, content_type, width, height, bytes, sha256)
           values ($1, $2, 'images', $3, 'image/png', 8, 8, 100, $4) returning id""",
        owner,
        job_id,
        f"{owner}/{job_id}.png",
        "0" * 64,
    )
    assert isinstance(image_id, uuid.UUID)
    return image_id


async def test_status_check_rejects_unknown_state(db: asyncpg.Connection) -> None:
    job_id = await insert_job(db, uuid.uuid4())
    with pytest.raises(asyncpg.CheckViolationError, match="status"):
        await db.execute("update imagen.jobs set status = 'exploded' where id = $1", job_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await insert_job(db, uuid.uuid4(), status="queued")


async def test_running_job_must_hold_a_lease(db: asyncpg.Connection) -> None:
    job_id = await insert_job(db, uuid.uuid4())
    with pytest.raises(asyncpg.CheckViolationError, match="jobs_running_has_lease"):
        await db.execute("update imagen.jobs set status = 'running' where id = $1", job_id)


async def test_database_rejects_data_url_in_spec(db: asyncpg.Connection) -> None:
    spec = {"previous_image": f"data:image/png;base64,{PNG_B64}"}
    with pytest.raises(asyncpg.CheckViolationError, match=r"imagen\.jobs\.spec holds inline image data") as err:
        await insert_job(db, uuid.uuid4(), spec=spec)
    assert "storage" in (err.value.hint or "")
    assert await db.fetchval("select count(*) from imagen.jobs") == 0


async def test_database_rejects_raw_base64_png_in_spec(db: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="inline image data"):
        await insert_job(db, uuid.uuid4(), spec={"init_image": PNG_B64})


async def test_database_rejects_100kb_string_in_spec(db: asyncpg.Connection) -> None:
    with pytest.raises(
        asyncpg.CheckViolationError, match=r"imagen\.jobs\.spec is \d+ characters long; the limit is 65536"
    ):
        await insert_job(db, uuid.uuid4(), spec={"notes": "x" * 100_000})


async def test_database_rejects_inline_images_in_event_payload_and_error(db: asyncpg.Connection) -> None:
    owner = uuid.uuid4()
    job_id = await insert_job(db, owner)
    with pytest.raises(asyncpg.CheckViolationError, match=r"imagen\.job_events\.payload"):
        await db.execute(
            "insert into imagen.job_events (job_id, owner_user_id, kind, payload) values ($1, $2, 'log', $3)",
            job_id,
            owner,
            {"image": f"data:image/webp;base64,{PNG_B64}"},
        )
    with pytest.raises(asyncpg.CheckViolationError, match=r"imagen\.jobs\.error"):
        await db.execute("update imagen.jobs set error = $2 where id = $1", job_id, "x" * 5000)
    # What was there is untouched.
    assert await db.fetchval("select error from imagen.jobs where id = $1", job_id) is None


async def test_small_ordinary_values_pass_the_guard(db: asyncpg.Connection) -> None:
    job_id = await insert_job(
        db, uuid.uuid4(), spec={"style_modifiers": ["watercolour", "data visualisation"], "seed": 7}
    )
    assert await db.fetchval("select spec->>'seed' from imagen.jobs where id = $1", job_id) == "7"


async def _collect(conn: asyncpg.Connection, channel: str) -> asyncio.Queue[str]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener(channel, lambda *args: queue.put_nowait(args[3]))
    return queue


async def test_insert_notifies_imagen_jobs_with_the_id_alone(db: asyncpg.Connection, db_url: str) -> None:
    listener = await asyncpg.connect(db_url)
    try:
        queue = await _collect(listener, "imagen_jobs")
        job_id = await insert_job(db, uuid.uuid4())
        payload = await asyncio.wait_for(queue.get(), 5)
        assert payload == str(job_id)
    finally:
        await listener.close()


async def test_status_update_notifies_imagen_job_events(db: asyncpg.Connection, db_url: str) -> None:
    owner = uuid.uuid4()
    job_id = await insert_job(db, owner)
    listener = await asyncpg.connect(db_url)
    try:
        queue = await _collect(listener, "imagen_job_events")
        await db.execute(
            "update imagen.jobs set status = 'running', locked_by = 'w1', lease_expires_at = now() + interval '30 s' where id = $1",
            job_id,
        )
        notes = json.loads(await asyncio.wait_for(queue.get(), 5))
        event_id = await db.fetchval("select max(id) from imagen.job_events where job_id = $1", job_id)
        assert notes == [
            {
                "event_id": event_id,
                "job_id": str(job_id),
                "owner_user_id": str(owner),
                "kind": "state",
                "status": "running",
            }
        ]
    finally:
        await listener.close()


async def test_a_new_job_writes_no_event_and_is_announced_on_imagen_jobs_alone(
    db: asyncpg.Connection, db_url: str
) -> None:
    owner = uuid.uuid4()
    listener = await asyncpg.connect(db_url)
    try:
        jobs = await _collect(listener, "imagen_jobs")
        events = await _collect(listener, "imagen_job_events")
        job_id = await insert_job(db, owner)
        assert await asyncio.wait_for(jobs.get(), 5) == str(job_id)
        assert await db.fetchval("select count(*) from imagen.job_events where job_id = $1", job_id) == 0
        # The first imagen_job_events notification is the first transition's, not the creation's.
        await db.execute(
            "update imagen.jobs set status = 'running', locked_by = 'w1', lease_expires_at = now() + interval '30 s' where id = $1",
            job_id,
        )
        first = json.loads(await asyncio.wait_for(events.get(), 5))
        assert [(e["job_id"], e["status"]) for e in first] == [(str(job_id), "running")]
    finally:
        await listener.close()


async def test_a_job_back_in_the_queue_is_announced_on_imagen_jobs(db: asyncpg.Connection, db_url: str) -> None:
    job_id = await insert_job(db, uuid.uuid4())
    await db.execute(
        "update imagen.jobs set status = 'running', locked_by = 'w1', lease_expires_at = now() + interval '30 s' where id = $1",
        job_id,
    )
    listener = await asyncpg.connect(db_url)
    try:
        jobs = await _collect(listener, "imagen_jobs")
        await db.execute(
            "update imagen.jobs set status = 'pending', locked_by = null, lease_expires_at = null where id = $1", job_id
        )
        assert await asyncio.wait_for(jobs.get(), 5) == str(job_id)
    finally:
        await listener.close()


async def test_imagen_job_signals_carries_running_cancellations_and_webhooks_only(
    db: asyncpg.Connection, db_url: str
) -> None:
    """Workers listen on imagen_job_signals: a running job's cancellation and a webhook delivery for a
    job reach them; claims, progress and a pending job's cancellation do not."""
    owner = uuid.uuid4()
    pending, running = await insert_job(db, owner), await insert_job(db, owner)
    listener = await asyncpg.connect(db_url)
    try:
        signals = await _collect(listener, "imagen_job_signals")
        events = await _collect(listener, "imagen_job_events")
        await db.execute(
            "update imagen.jobs set status = 'running', locked_by = 'w1', lease_expires_at = now() + interval '30 s' where id = $1",
            running,
        )
        await db.execute(
            "insert into imagen.job_events (job_id, owner_user_id, kind, payload) values ($1, $2, 'progress', $3)",
            running,
            owner,
            {"progress": 0.5},
        )
        assert await db.fetchval("select imagen.cancel_job($1)", pending) == "cancelled"
        assert await db.fetchval("select imagen.cancel_job($1)", running) == "cancelled"
        webhook_id = await db.fetchval(
            "insert into imagen.job_events (job_id, owner_user_id, kind, payload, delivery_id) values ($1, $2, 'webhook', '{}', 'msg_1') returning id",
            running,
            owner,
        )
        cancel = json.loads(await asyncio.wait_for(signals.get(), 5))
        assert [(e["job_id"], e["kind"], e["status"]) for e in cancel] == [(str(running), "state", "cancelled")]
        webhook = json.loads(await asyncio.wait_for(signals.get(), 5))
        assert webhook == [
            {"event_id": webhook_id, "job_id": str(running), "owner_user_id": str(owner), "kind": "webhook"}
        ]
        # imagen_job_events still carries everything, in order: the claim, the progress, both cancels, the webhook.
        seen = [json.loads(await asyncio.wait_for(events.get(), 5)) for _ in range(5)]
        assert [(e[0]["kind"], e[0].get("status")) for e in seen] == [
            ("state", "running"),
            ("progress", None),
            ("state", "cancelled"),
            ("state", "cancelled"),
            ("webhook", None),
        ]
        assert signals.empty()
    finally:
        await listener.close()


async def test_a_batch_transition_is_announced_in_notifications_under_8000_bytes(
    db: asyncpg.Connection, db_url: str
) -> None:
    owner = uuid.uuid4()
    await db.execute(
        "insert into imagen.jobs (owner_user_id, prompt) select $1, 'p' from generate_series(1, 500)", owner
    )
    listener = await asyncpg.connect(db_url)
    try:
        queue = await _collect(listener, "imagen_job_events")
        await db.execute(
            "update imagen.jobs set status = 'running', locked_by = 'w', lease_expires_at = now() + interval '1 min'"
        )
        seen: list[dict[str, Any]] = []
        while len(seen) < 500:
            payload = await asyncio.wait_for(queue.get(), 5)
            assert len(payload.encode()) < 8000
            seen.extend(json.loads(payload))
        ids = [e["event_id"] for e in seen]
        assert ids == sorted(ids) and len(set(ids)) == 500
        assert {e["status"] for e in seen} == {"running"}
    finally:
        await listener.close()


async def test_every_transition_writes_a_job_event_in_the_same_transaction(db: asyncpg.Connection) -> None:
    job_id = await insert_job(db, uuid.uuid4())
    async with db.transaction():
        await db.execute(
            "update imagen.jobs set status = 'running', locked_by = 'w1', lease_expires_at = now() + interval '1 min' where id = $1",
            job_id,
        )
        await db.execute("update imagen.jobs set lease_expires_at = now() + interval '2 min' where id = $1", job_id)
        await db.execute("update imagen.jobs set status = 'done', lease_expires_at = null where id = $1", job_id)
    statuses = await db.fetch(
        "select payload->>'status' as s, payload->>'previous_status' as p from imagen.job_events where job_id = $1 order by id",
        job_id,
    )
    # Two transitions; the creation (not a transition) and the lease renewal (no status change) wrote nothing.
    assert [(r["s"], r["p"]) for r in statuses] == [("running", "pending"), ("done", "running")]


async def test_failed_update_leaves_no_event(db: asyncpg.Connection) -> None:
    job_id = await insert_job(db, uuid.uuid4())
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("update imagen.jobs set status = 'running' where id = $1", job_id)
    assert await db.fetchval("select count(*) from imagen.job_events where job_id = $1", job_id) == 0


async def as_user(conn: asyncpg.Connection, role: str, sub: uuid.UUID | None) -> None:
    await conn.execute(f"set role {role}")
    claims = json.dumps({"sub": str(sub), "role": role}) if sub else ""
    await conn.execute("select set_config('request.jwt.claims', $1, false)", claims)


async def seed_two_users(db: asyncpg.Connection) -> dict[str, Any]:
    a, b = uuid.uuid4(), uuid.uuid4()
    ids: dict[str, Any] = {"a": a, "b": b}
    for who, owner in (("a", a), ("b", b)):
        canvas = await db.fetchval(
            "insert into imagen.canvases (owner_user_id, name) values ($1, $2) returning id", owner, who
        )
        job = await insert_job(db, owner, canvas_id=canvas, node_id="n1")
        image = await insert_image(db, owner, job)
        await db.execute(
            "insert into imagen.job_events (job_id, owner_user_id, kind, payload) values ($1, $2, 'log', '{}')",
            job,
            owner,
        )
        await db.execute(
            """insert into imagen.canvas_nodes (canvas_id, id, owner_user_id, type)
               values ($1, 'n1', $2, 'image'), ($1, 'n2', $2, 'image')""",
            canvas,
            owner,
        )
        await db.execute(
            "insert into imagen.canvas_edges (canvas_id, id, owner_user_id, source, target) values ($1, 'e1', $2, 'n1', 'n2')",
            canvas,
            owner,
        )
        ids[f"{who}_canvas"], ids[f"{who}_job"], ids[f"{who}_image"] = canvas, job, image
    return ids


async def test_rls_user_sees_only_their_own_rows(db: asyncpg.Connection) -> None:
    ids = await seed_two_users(db)
    await as_user(db, "authenticated", ids["a"])
    for table in ("jobs", "images", "job_events", "canvases", "canvas_nodes", "canvas_edges"):
        owners = {r[0] for r in await db.fetch(f"select owner_user_id from imagen.{table}")}
        assert owners == {ids["a"]}, table
    assert await db.fetchval("select count(*) from imagen.jobs where id = $1", ids["b_job"]) == 0
    # What a user may change on a canvas is theirs only: the other user's edge is out of reach.
    assert (
        await db.execute("update imagen.canvas_edges set target = 'n1' where canvas_id = $1", ids["b_canvas"])
        == "UPDATE 0"
    )
    assert await db.execute("delete from imagen.canvas_edges where canvas_id = $1", ids["b_canvas"]) == "DELETE 0"
    await db.execute("reset role")
    assert await db.fetchval("select count(*) from imagen.canvas_edges where canvas_id = $1", ids["b_canvas"]) == 1


async def test_rls_user_cannot_insert_under_another_users_id(db: asyncpg.Connection) -> None:
    ids = await seed_two_users(db)
    await as_user(db, "authenticated", ids["a"])
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await insert_job(db, ids["b"])
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await db.execute("insert into imagen.canvases (owner_user_id) values ($1)", ids["b"])
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await db.execute(
            "insert into imagen.canvas_edges (canvas_id, id, owner_user_id, source, target) values ($1, 'e2', $2, 'n2', 'n1')",
            ids["b_canvas"],
            ids["b"],
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await insert_image(db, ids["b"], ids["b_job"])
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute(
            "insert into imagen.job_events (job_id, owner_user_id, kind) values ($1, $2, 'log')", ids["b_job"], ids["b"]
        )


async def test_rls_user_can_queue_own_job_but_not_a_running_one(db: asyncpg.Connection) -> None:
    ids = await seed_two_users(db)
    await as_user(db, "authenticated", ids["a"])
    job_id = await insert_job(db, ids["a"])
    assert await db.fetchval("select status from imagen.jobs where id = $1", job_id) == "pending"
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await insert_job(db, ids["a"], status="done")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("update imagen.jobs set status = 'done' where id = $1", job_id)


async def test_rls_anon_sees_nothing(db: asyncpg.Connection) -> None:
    ids = await seed_two_users(db)
    await as_user(db, "anon", ids["a"])  # even with a user's claims
    for table in ("jobs", "images", "job_events", "canvases", "canvas_nodes", "canvas_edges"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.fetch(f"select * from imagen.{table}")


async def test_cancel_job_is_owner_only(db: asyncpg.Connection) -> None:
    ids = await seed_two_users(db)
    await as_user(db, "authenticated", ids["a"])
    with pytest.raises(asyncpg.NoDataFoundError, match="not found"):
        await db.fetchval(q("cancel_job"), ids["b_job"])
    assert await db.fetchval(q("cancel_job"), ids["a_job"]) == "cancelled"
    await db.execute("reset role")
    assert await db.fetchval("select status from imagen.jobs where id = $1", ids["b_job"]) == "pending"


async def test_cancel_job_without_claims_needs_a_service_connection(db: asyncpg.Connection) -> None:
    ids = await seed_two_users(db)
    await as_user(db, "authenticated", None)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="signed-in user"):
        await db.fetchval(q("cancel_job"), ids["a_job"])


async def test_canvas_nodes_cannot_join_another_users_canvas(db: asyncpg.Connection) -> None:
    ids = await seed_two_users(db)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute(
            "insert into imagen.canvas_nodes (canvas_id, id, owner_user_id, type) values ($1, 'x', $2, 'image')",
            ids["b_canvas"],
            ids["a"],
        )


async def test_claim_queries_use_the_partial_pending_index(db: asyncpg.Connection) -> None:
    owner = uuid.uuid4()
    await db.execute(
        """insert into imagen.jobs (owner_user_id, prompt, status, completed_at)
           select $1, 'old', 'done', now() from generate_series(1, 5000)""",
        owner,
    )
    await db.execute(
        "insert into imagen.jobs (owner_user_id, prompt) select $1, 'new' from generate_series(1, 20)", owner
    )
    await db.execute("analyze imagen.jobs")
    plan = "\n".join(r[0] for r in await db.fetch("explain " + q("claim_jobs"), "w1", 10, 30.0, None, [], [], [], []))
    assert "jobs_pending_idx" in plan, plan
    plan = "\n".join(r[0] for r in await db.fetch("explain " + q("claim_next"), "w1", 10, 30.0, None, 32767))
    assert "jobs_pending_idx" in plan, plan


async def test_deleting_an_image_clears_the_jobs_reference(db: asyncpg.Connection) -> None:
    owner = uuid.uuid4()
    job_id = await insert_job(db, owner)
    image_id = await insert_image(db, owner, job_id)
    await db.execute("update imagen.jobs set image_id = $2 where id = $1", job_id, image_id)
    await db.execute("delete from imagen.images where id = $1", image_id)
    assert await db.fetchval("select image_id from imagen.jobs where id = $1", job_id) is None


async def test_idempotency_key_is_unique_per_owner(db: asyncpg.Connection) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await insert_job(db, a, idempotency_key="k1")
    await insert_job(db, b, idempotency_key="k1")
    with pytest.raises(asyncpg.UniqueViolationError):
        await insert_job(db, a, idempotency_key="k1")
