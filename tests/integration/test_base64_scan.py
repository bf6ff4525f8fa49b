"""The suite-wide base64 scan finds image data planted in any text or jsonb column of the imagen
schema (past the database's own guard, switched off in this test's throwaway database), and finds
nothing in a database where real jobs ran to completion."""

from __future__ import annotations

import base64
import io
import os
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from PIL import Image

from imagen_worker.jobs import submit_job
from imagen_worker.providers.local import draw
from imagen_worker.queue import WorkerConfig
from imagen_worker.spec import parse_spec

from ..base64_scan import assert_no_base64_images, find_image_data, scan_for_base64_images
from ..helpers import local_pipeline, running_worker, wait_for_status

pytestmark = pytest.mark.asyncio

OWNER = uuid.UUID("00000000-0000-4000-8000-0000000000b6")


def encoded(fmt: str) -> str:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(out, format=fmt)
    return base64.b64encode(out.getvalue()).decode()


async def drop_inline_image_guards(conn: asyncpg.Connection) -> int:
    """Switch off, in this database only, every check constraint and trigger that calls
    imagen.check_no_inline_image; returns how many."""
    constraints = await conn.fetch(
        """select conrelid::regclass::text as tbl, conname
             from pg_constraint
            where contype = 'c'
              and connamespace = 'imagen'::regnamespace
              and pg_get_constraintdef(oid) like '%check_no_inline_image%'"""
    )
    for c in constraints:
        await conn.execute(f'alter table {c["tbl"]} drop constraint "{c["conname"]}"')
    triggers = await conn.fetch(
        """select t.tgrelid::regclass::text as tbl, t.tgname
             from pg_trigger t
             join pg_proc p on p.oid = t.tgfoid
            where not t.tgisinternal
              and p.prosrc like '%check_no_inline_image%'"""
    )
    for t in triggers:
        await conn.execute(f'alter table {t["tbl"]} disable trigger "{t["tgname"]}"')
    return len(constraints) + len(triggers)


async def test_scan_finds_base64_images_planted_past_the_database_guard(db: asyncpg.Connection, db_url: str) -> None:
    assert await drop_inline_image_guards(db) > 0
    png, jpeg, gif, webp = encoded("PNG"), encoded("JPEG"), encoded("GIF"), encoded("WEBP")
    no_signature = base64.b64encode(os.urandom(300)).decode()

    job_id = await db.fetchval(
        "insert into imagen.jobs (owner_user_id, prompt, spec, error) values ($1, 'a fox', $2, $3) returning id",
        OWNER,
        {"init_image": f"data:image/png;base64,{png}"},
        f"provider said: {gif}",
    )
    await db.execute(
        "insert into imagen.job_events (job_id, owner_user_id, kind, payload) values ($1, $2, 'log', $3)",
        job_id,
        OWNER,
        {"preview": jpeg},
    )
    image_id = await db.fetchval(
        """insert into imagen.images (owner_user_id, bucket, path, content_type, width, height, bytes, sha256)
           values ($1, 'images', $2, 'image/webp', 4, 4, 10, $3) returning id""",
        OWNER,
        webp,
        "0" * 64,
    )
    canvas_id = await db.fetchval("insert into imagen.canvases (owner_user_id) values ($1) returning id", OWNER)
    await db.execute(
        "insert into imagen.canvas_nodes (canvas_id, id, owner_user_id, type, data) values ($1, 'n1', $2, 'image', $3)",
        canvas_id,
        OWNER,
        {"cached": no_signature},
    )
    try:
        findings = await scan_for_base64_images(db)
        found = {(f.table, f.column, f.kind) for f in findings}
        assert found == {
            ("jobs", "spec", "data: URL"),
            ("jobs", "error", "GIF"),
            ("job_events", "payload", "JPEG"),
            ("images", "path", "WebP/RIFF"),
            ("canvas_nodes", "data", f"base64 run of {len(no_signature)} characters"),
        }
        with pytest.raises(AssertionError, match=r"5 value\(s\) of base64 image data in database imagen_t_"):
            await assert_no_base64_images(db_url)
    finally:
        # Leave the database clean for the teardown scan.
        await db.execute("delete from imagen.images where id = $1", image_id)
        await db.execute("delete from imagen.jobs where id = $1", job_id)
        await db.execute("delete from imagen.canvases where id = $1", canvas_id)
    assert await scan_for_base64_images(db) == []


async def test_scan_finds_nothing_after_real_jobs_finish(db: asyncpg.Connection, db_url: str, tmp_path: Path) -> None:
    specs: list[dict[str, Any]] = [
        {"prompt": "a red fox in snow", "seed": 7, "style_modifiers": ["watercolor"]},
        {"prompt": "a lighthouse at dusk", "aspect_ratio": "16:9", "options": {"delay_s": 0.2}},
        {"prompt": "a cat", "size": "9000x9000"},  # fails: too large for the local model
    ]
    async with running_worker(db_url, local_pipeline(tmp_path), WorkerConfig(concurrency=4, poll_interval=0.5)):
        ids = [await submit_job(db, parse_spec(s), owner_user_id=OWNER) for s in specs]
        first = await wait_for_status(db, ids, timeout=30)
        image_id = await db.fetchval("select image_id from imagen.jobs where id = $1", ids[0])
        refine = await submit_job(
            db,
            parse_spec({"prompt": "the same fox, at night", "previous_image_id": str(image_id)}),
            owner_user_id=OWNER,
        )
        second = await wait_for_status(db, [refine], timeout=30)
    assert [first[i] for i in ids] == ["done", "done", "failed"]
    assert second[refine] == "done"
    canvas_id = await db.fetchval("insert into imagen.canvases (owner_user_id) values ($1) returning id", OWNER)
    await db.execute(
        "insert into imagen.canvas_nodes (canvas_id, id, owner_user_id, type, data) values ($1, 'n1', $2, 'image', $3)",
        canvas_id,
        OWNER,
        {"image_id": str(image_id), "job_id": str(ids[0]), "prompt": "a red fox in snow"},
    )
    assert await db.fetchval("select count(*) from imagen.job_events") >= 10
    assert await scan_for_base64_images(db) == []
    await assert_no_base64_images(db_url)


@pytest.mark.parametrize(
    "text",
    [
        "0123456789abcdef" * 4,  # a sha256 hex digest
        "ab" * 400,  # a long run without the variety of encoded bytes
        ", ".join(str(uuid.uuid4()) for _ in range(50)),
        "a watercolor fox, " * 100,
        "00000000-0000-4000-8000-0000000000b6/4b3c2d1e-0000-4000-8000-000000000001.thumb.webp",
    ],
)
async def test_scan_leaves_ordinary_values_alone(text: str) -> None:
    assert find_image_data(text) is None


async def test_scan_recognises_every_image_format_it_names() -> None:
    for fmt, kind in [("PNG", "PNG"), ("JPEG", "JPEG"), ("GIF", "GIF"), ("WEBP", "WebP/RIFF")]:
        hit = find_image_data(f'{{"x": "{encoded(fmt)}"}}')
        assert hit is not None and hit[0] == kind, fmt
    png = base64.b64encode(draw("x", 1, 8, 8)).decode()
    assert find_image_data(f"DATA:IMAGE/png;base64,{png}") == ("data: URL", 0)
