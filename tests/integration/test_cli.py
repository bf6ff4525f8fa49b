"""The `imagen` command end to end: submit, worker, jobs, cancel, generate."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg

from ..conftest import IMAGEN


def test_cli_submit_then_worker_produces_a_done_job_a_png_and_an_images_row(
    cli_env: dict[str, str], data_dir: Path
) -> None:
    submit = subprocess.run([*IMAGEN, "submit", "a red fox"], env=cli_env, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    job_id = uuid.UUID(submit.stdout.strip())
    worker = subprocess.Popen(
        [*IMAGEN, "worker", "--poll-interval", "0.5"], env=cli_env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        status = ""
        while time.monotonic() < deadline:
            out = subprocess.run([*IMAGEN, "jobs", "--json"], env=cli_env, capture_output=True, text=True, timeout=60)
            status = out.stdout
            if '"status": "done"' in status:
                break
            time.sleep(0.3)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, log = worker.communicate(timeout=30)
    assert worker.returncode == 0, log
    assert '"status": "done"' in status
    assert f"job={job_id} event=done" in log
    pngs = list((data_dir / "store" / "images").rglob(f"{job_id}.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"

    async def images() -> int:
        conn = await asyncpg.connect(cli_env["IMAGEN_DATABASE_URL"])
        try:
            return int(await conn.fetchval("select count(*) from imagen.images where job_id = $1", job_id))
        finally:
            await conn.close()

    assert asyncio.run(images()) == 1


def test_cli_cancel_and_jobs(cli_env: dict[str, str]) -> None:
    job = subprocess.run(
        [*IMAGEN, "submit", "--seed", "3", "a blue heron"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    job_id = job.stdout.strip()
    out = subprocess.run([*IMAGEN, "cancel", job_id], env=cli_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"{job_id} cancelled"
    missing = subprocess.run(
        [*IMAGEN, "cancel", str(uuid.uuid4())], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode != 0 and "not found" in missing.stderr
    listing = subprocess.run(
        [*IMAGEN, "jobs", "--status", "cancelled"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert job_id in listing.stdout and "cancelled" in listing.stdout


def test_cli_submit_refuses_a_bad_spec_naming_the_field(cli_env: dict[str, str]) -> None:
    out = subprocess.run(
        [*IMAGEN, "submit", "--size", "big", "a fox"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "Error: size: 'big' must look like 1024x1024" in out.stderr


def test_cli_generate_with_a_local_worker_saves_the_image(cli_env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    out = subprocess.run(
        [*IMAGEN, "generate", "--local-worker", "--size", "256x256", "a lighthouse", "-o", str(target)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert target.read_bytes()[:4] == b"\x89PNG"
    assert "done" in out.stderr


def test_worker_help_lists_every_documented_flag() -> None:
    out = subprocess.run([*IMAGEN, "worker", "--help"], capture_output=True, text=True, timeout=60).stdout
    for flag in (
        "--database-url",
        "--concurrency",
        "--prefetch",
        "--poll-interval",
        "--lease-seconds",
        "--job-timeout",
        "--scope",
        "--owner",
        "--poll-only",
    ):
        assert flag in out


def test_worker_refuses_to_start_with_malformed_limits_or_prices(cli_env: dict[str, str], tmp_path: Path) -> None:
    bad_limits = subprocess.run(
        [*IMAGEN, "worker"],
        env={**cli_env, "IMAGEN_PROVIDER_LIMITS": "{not json"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_limits.returncode != 0 and "Error: IMAGEN_PROVIDER_LIMITS is not valid JSON" in bad_limits.stderr
    assert "Traceback" not in bad_limits.stderr
    prices = tmp_path / "prices.json"
    prices.write_text('{"openai/gpt-image-1": "free"}')
    bad_prices = subprocess.run(
        [*IMAGEN, "worker"],
        env={**cli_env, "IMAGEN_PRICES_FILE": str(prices)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_prices.returncode != 0 and str(prices) in bad_prices.stderr


def test_cli_reads_go_through_the_service_in_the_rest_api_shapes(cli_env: dict[str, str]) -> None:
    """`imagen jobs`, `imagen providers` and `imagen workers` are transports over imagen_worker.service:
    one owner's jobs under RLS, in the JSON a REST client gets, and the provider table that says why a
    provider cannot run."""
    env = {k: v for k, v in cli_env.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    mine = subprocess.run([*IMAGEN, "submit", "--json", "mine"], env=env, capture_output=True, text=True, timeout=60)
    assert mine.returncode == 0, mine.stderr
    submitted = json.loads(mine.stdout)

    async def theirs() -> None:
        conn = await asyncpg.connect(env["IMAGEN_DATABASE_URL"])
        try:
            await conn.execute("insert into imagen.jobs (owner_user_id, prompt) values ($1, 'theirs')", uuid.uuid4())
        finally:
            await conn.close()

    asyncio.run(theirs())
    out = subprocess.run([*IMAGEN, "jobs", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listed = [json.loads(line) for line in out.stdout.splitlines()]
    assert [j["id"] for j in listed] == [submitted["id"]], "another owner's job was listed"
    assert set(listed[0]) == set(submitted), "not the shape POST jobs and submit --json give"
    assert "waiting_for_worker" in listed[0] and "image" in listed[0]

    table = subprocess.run([*IMAGEN, "providers", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    by_name = {p["name"]: p for p in json.loads(table.stdout)["providers"]}
    assert by_name["local"]["available"] is True
    assert by_name["openai"]["available"] is False and "OPENAI_API_KEY" in by_name["openai"]["reason"]

    workers = subprocess.run([*IMAGEN, "workers"], env=env, capture_output=True, text=True, timeout=60)
    assert workers.returncode == 0 and "no live worker" in workers.stdout
