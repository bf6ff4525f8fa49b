"""The notebook API (generate, sweep, compare, history, Gallery, Generation) on a real database, with
the runtime's own worker, `local` and the OpenAI fake driven through the real `openai` SDK."""

from __future__ import annotations

import _thread
import asyncio
import base64
import contextlib
import io
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from PIL import Image

import imagen_canvas
from imagen_canvas import Gallery, JobFailed
from imagen_canvas.runtime import Runtime
from imagen_worker.errors import InvalidField

from ..conftest import run_sync
from ..fakes._server import FakeServer
from ..fakes.openai_server import FakeOpenAI
from ..fakes.supabase_storage import FakeSupabaseStorage


@pytest.fixture
def rt(db_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    monkeypatch.setenv("IMAGEN_DATA_DIR", str(data_dir))
    monkeypatch.setenv("IMAGEN_POLL_INTERVAL", "0.2")
    runtime = imagen_canvas.configure(database_url=db_url, owner_user_id=uuid.uuid4())
    yield runtime
    runtime.close()


def rows(db_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(db_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return run_sync(go)


@contextlib.contextmanager
def serving(*fakes: FakeServer) -> Iterator[list[str]]:
    """Fake servers on a loop of their own (the runtime's is not started yet, and configure() replaces it)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield [asyncio.run_coroutine_threadsafe(f.start(), loop).result(10) for f in fakes]
    finally:
        for fake in fakes:
            asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def thumbnails(html: str) -> list[Image.Image]:
    out = []
    for data in re.findall(r'src="data:image/webp;base64,([A-Za-z0-9+/=]+)"', html):
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        img.load()
        out.append(img)
    return out


def test_generate_returns_a_displayed_image_with_its_spec_and_the_seed_that_made_it(
    rt: Runtime, tmp_path: Path
) -> None:
    gen = imagen_canvas.generate("a red fox", size="320x200", seed=42, style_modifiers=["oil painting"])
    assert gen.status == "done" and gen.seed == 42
    assert gen.image.size == (320, 200)
    assert gen.provider == "local" and gen.spec["style_modifiers"] == ["oil painting"]
    assert gen.duration_s is not None and gen.duration_s > 0 and gen.cost_usd == 0.0
    png = gen._repr_png_()
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
    page = gen._repr_html_()
    assert thumbnails(page)[0].size == (320, 200)
    assert "a red fox" in page and "42" in page and gen.id in page
    assert gen.save(tmp_path / "fox.png").read_bytes()[:4] == b"\x89PNG"
    assert gen.url is not None and gen.url.startswith("/imagen/files/images/")
    assert gen.raise_for_status() is gen


def test_a_failed_generation_displays_its_error_in_place_and_raises_on_request(rt: Runtime) -> None:
    gen = imagen_canvas.generate("<b>x</b>", provider="openai")  # no OPENAI_API_KEY here
    assert gen.status == "failed" and "OPENAI_API_KEY" in (gen.error or "")
    page = gen._repr_html_()
    assert "OPENAI_API_KEY" in page and "Traceback" not in page and "<b>x</b>" not in page
    assert gen._repr_png_() is None
    with pytest.raises(JobFailed, match="OPENAI_API_KEY"):
        gen.raise_for_status()


def test_a_bad_spec_is_refused_before_anything_is_queued(rt: Runtime, db_url: str) -> None:
    with pytest.raises(InvalidField, match=r"^size:"):
        imagen_canvas.generate("x", size="tiny")
    assert rows(db_url, "select id from imagen.jobs") == []


@pytest.mark.slow
def test_a_sweep_over_prompts_seeds_and_two_providers_fills_its_gallery(
    rt: Runtime, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeOpenAI()
    base_url = rt.call(fake.start)
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("OPENAI_API_KEY", fake.api_key)
    try:
        prompts = ["a red fox", "a lighthouse", "a bowl of fruit"]
        gallery = imagen_canvas.sweep(prompts, seeds=[1, 2, 3, 4], providers=["local", "openai"])
    finally:
        rt.call(fake.stop)
    assert isinstance(gallery, Gallery) and len(gallery) == 24
    assert [g.status for g in gallery] == ["done"] * 24
    records = gallery.to_records()
    assert [(r["prompt"], r["provider"]) for r in records[:4]] == [
        ("a red fox", "local"),
        ("a red fox", "openai"),
        ("a red fox", "local"),
        ("a red fox", "openai"),
    ]
    assert {(r["prompt"], r["seed"]) for r in records if r["provider"] == "local"} == {
        (p, s) for p in prompts for s in (1, 2, 3, 4)
    }
    # gpt-image-1 takes no seed: its four per prompt are unseeded samples, and say so.
    assert {r["seed"] for r in records if r["provider"] == "openai"} == {None}
    assert sorted(g.sample for g in gallery if g.provider == "openai" and g.prompt == "a lighthouse") == [1, 2, 3, 4]
    assert all(r["url"] and r["duration_s"] is not None for r in records)
    assert sum(r["cost_usd"] for r in records if r["provider"] == "openai") > 0
    frame = gallery.to_pandas()
    assert list(frame.columns) == [
        "job_id",
        "prompt",
        "seed",
        "provider",
        "model",
        "status",
        "duration_s",
        "cost_usd",
        "url",
        "error",
    ]
    assert len(frame) == 24
    images = thumbnails(gallery._repr_html_())
    assert len(images) == 24 and all(max(i.size) <= 256 for i in images)
    assert len(gallery.where(provider="openai")) == 12 and len(gallery.where(status="failed")) == 0
    assert gallery[0].prompt == "a red fox" and len(gallery[2:5]) == 3
    # Every one of them is done in the database, at batch priority, in one group.
    stored = rows(db_url, "select status, priority, group_id from imagen.jobs")
    assert {r["status"] for r in stored} == {"done"}
    assert {r["priority"] for r in stored} == {150} and len({r["group_id"] for r in stored}) == 1
    canvas = gallery[:4].to_canvas(name="picks")
    assert len([n for n in canvas.nodes if n["type"] == "image"]) == 4
    assert len(imagen_canvas.history(limit=5)) == 5
    past = imagen_canvas.history(limit=100)
    assert len(past) == 24 and {g.id for g in past} == {g.id for g in gallery}
    assert len(imagen_canvas.history(provider="openai", limit=100)) == 12


def test_compare_runs_one_prompt_on_each_provider(rt: Runtime) -> None:
    gallery = imagen_canvas.compare("a lighthouse", providers=["local"], size="128x128")
    assert [(g.provider, g.status, g.image.size) for g in gallery] == [("local", "done", (128, 128))]


@pytest.mark.slow
def test_interrupting_a_sweep_cancels_the_jobs_left_and_says_so(
    rt: Runtime, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupt_once_some_ran() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if rows(db_url, "select 1 from imagen.jobs where status = 'done' limit 1"):
                break
            time.sleep(0.05)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_some_ran, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        imagen_canvas.sweep(["slow"] * 2, seeds=20, options={"delay_s": 0.3}, size="64x64", progress=False)
    statuses = [r["status"] for r in rows(db_url, "select status from imagen.jobs")]
    assert len(statuses) == 40
    assert "pending" not in statuses and "running" not in statuses
    cancelled = statuses.count("cancelled")
    assert cancelled > 0 and statuses.count("done") > 0
    said = capsys.readouterr().err
    assert f"interrupted: cancelled {cancelled} of the 40 jobs submitted" in said


@pytest.mark.slow
def test_a_canvas_job_during_a_running_200_job_sweep_starts_before_the_sweep_ends(rt: Runtime, db_url: str) -> None:
    done: list[Gallery] = []
    sweeping = threading.Thread(
        target=lambda: done.append(imagen_canvas.sweep(["busy"], seeds=200, size="64x64", progress=False)), daemon=True
    )
    sweeping.start()
    deadline = time.monotonic() + 30
    while not rows(db_url, "select 1 from imagen.jobs where status = 'done' limit 1"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    canvas = imagen_canvas.Canvas()
    node = canvas.add_image("a click on the canvas", provider="local", size="64x64")
    (job,) = canvas.generate(node)
    assert job["priority"] == 50
    sweeping.join(120)
    assert done and len(done[0]) == 200
    (click,) = rows(db_url, "select started_at from imagen.jobs where id = $1", uuid.UUID(job["id"]))
    later = rows(
        db_url,
        "select count(*) as n from imagen.jobs where group_id is not null and node_id is null and started_at > $1",
        click["started_at"],
    )
    assert later[0]["n"] > 0, "the canvas job started only after the whole sweep"


def test_agenerate_awaits_the_generation_while_the_callers_loop_keeps_running(rt: Runtime) -> None:
    async def main() -> tuple[imagen_canvas.Generation, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(tick())
        gen = await imagen_canvas.agenerate("a red fox", size="64x64", seed=3, options={"delay_s": 0.5})
        ticking.cancel()
        return gen, ticks

    gen, ticks = asyncio.run(main())
    assert (gen.status, gen.seed, gen.image.size) == ("done", 3, (64, 64))
    assert ticks >= 20  # the awaiting loop ran on through the half second the provider took


def test_cancelling_the_task_awaiting_agenerate_cancels_its_job(rt: Runtime, db_url: str) -> None:
    async def main() -> str:
        conn = await asyncpg.connect(db_url)
        try:
            task = asyncio.create_task(imagen_canvas.agenerate("slow", size="64x64", options={"delay_s": 10}))
            deadline = time.monotonic() + 30
            while not await conn.fetchval("select count(*) from imagen.jobs where status = 'running'"):
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return str(await conn.fetchval("select status from imagen.jobs"))
        finally:
            await conn.close()

    assert asyncio.run(main()) == "cancelled"  # at once, not 10 s later as done


def test_configure_sets_the_database_the_storage_and_the_default_provider_in_code(
    db_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What configure() is given wins over the environment: here IMAGEN_DATABASE_URL names a server that
    does not exist, IMAGEN_STORAGE and IMAGEN_DEFAULT_PROVIDER are unset (local and local)."""
    monkeypatch.setenv("IMAGEN_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nowhere")
    monkeypatch.delenv("IMAGEN_STORAGE", raising=False)
    monkeypatch.delenv("IMAGEN_DEFAULT_PROVIDER", raising=False)
    monkeypatch.setenv("IMAGEN_DATA_DIR", str(data_dir))
    monkeypatch.setenv("IMAGEN_POLL_INTERVAL", "0.2")
    openai, supabase = FakeOpenAI(), FakeSupabaseStorage()
    supabase.create_bucket("images")
    with serving(openai, supabase) as (openai_url, supabase_url):
        monkeypatch.setenv("OPENAI_BASE_URL", openai_url)
        monkeypatch.setenv("OPENAI_API_KEY", openai.api_key)
        monkeypatch.setenv("SUPABASE_URL", supabase_url + "/")
        monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", supabase.service_role_key)
        owner = uuid.uuid4()
        runtime = imagen_canvas.configure(
            database_url=db_url, storage="supabase", default_provider="openai", owner_user_id=owner
        )
        try:
            gen = imagen_canvas.generate("a red fox")
            assert (gen.status, gen.provider) == ("done", "openai"), gen.error
            assert supabase.stored("images", f"{owner}/{gen.id}.png") is not None
            assert gen.image.size[0] > 0  # read back from the Supabase store
        finally:
            runtime.close()
    (job,) = rows(db_url, "select provider, status from imagen.jobs where owner_user_id = $1", owner)
    assert (job["provider"], job["status"]) == ("openai", "done")
    assert not any(data_dir.rglob("*.png"))  # nothing went to the local store


def test_a_sweep_outside_a_kernel_shows_a_text_progress_bar(rt: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    imagen_canvas.sweep(["a red fox"], seeds=2, size="64x64")
    err = capsys.readouterr().err
    assert "sweep: 100%" in err and "2/2" in err, err
