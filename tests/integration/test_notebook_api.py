"""The notebook API (generate, sweep, compare, history, Gallery, Generation) on a real database, with
the runtime's own worker, `local` and the OpenAI fake driven through the real `openai` SDK."""

from __future__ import annotations

import _thread
import base64
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
from ..fakes.openai_server import FakeOpenAI


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
