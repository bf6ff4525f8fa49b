"""The Jupyter server extension: loads, reaches the database, runs the worker in-process."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from tornado.httpclient import HTTPClientError


@pytest.fixture
def jp_server_config(db_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("IMAGEN_DATA_DIR", str(data_dir))
    return {
        "ServerApp": {"jpserver_extensions": {"imagen_canvas_server": True}},
        "ImagenCanvasApp": {"database_url": db_url, "poll_interval": 0.5},
    }


async def test_extension_reports_its_database_and_worker(jp_fetch: Any) -> None:
    response = await jp_fetch("imagen", "api", "health")
    body = json.loads(response.body)
    assert body["error"] is None
    assert body["database"] == "configured"
    assert body["pending_migrations"] == []
    assert body["worker"]["in_flight"] == 0


async def test_health_needs_an_authenticated_user(jp_fetch: Any) -> None:
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("imagen", "api", "health", headers={"Authorization": ""})
    assert err.value.code == 403


async def test_in_process_worker_runs_a_job_queued_by_sql(jp_fetch: Any, db_url: str, data_dir: Path) -> None:
    await jp_fetch("imagen", "api", "health")  # the services are up
    conn = await asyncpg.connect(db_url)
    try:
        job_id = await conn.fetchval(
            "insert into imagen.jobs (owner_user_id, prompt) values ($1, 'a red fox') returning id", uuid.uuid4()
        )
        deadline = time.monotonic() + 20
        while await conn.fetchval("select status from imagen.jobs where id = $1", job_id) != "done":
            assert time.monotonic() < deadline, "the in-process worker did not finish the job"
            await asyncio.sleep(0.1)
        path = await conn.fetchval("select i.path from imagen.images i where i.job_id = $1", job_id)
    finally:
        await conn.close()
    assert (data_dir / "store" / "images" / path).read_bytes()[:4] == b"\x89PNG"
    body = json.loads((await jp_fetch("imagen", "api", "health")).body)
    assert body["worker"]["done"] == 1
