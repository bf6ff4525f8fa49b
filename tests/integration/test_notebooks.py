"""The example notebooks run top to bottom on a fresh database, and `generate()` works in a fresh kernel
with no set-up, with and without the server extension running."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from ..conftest import REPO
from ..server_helpers import ready

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
pytestmark = pytest.mark.slow


def _client(nb: Any, cwd: Path, timeout: int) -> NotebookClient:
    return NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})


def _outputs(nb: Any) -> list[dict[str, Any]]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def run_notebook(nb: Any, cwd: Path, env: dict[str, str], timeout: int = 180) -> list[dict[str, Any]]:
    """Execute in a fresh kernel whose environment is `env`; every output of every code cell."""
    _client(nb, cwd, timeout).execute(env=env)
    return _outputs(nb)


async def arun_notebook(nb: Any, cwd: Path, env: dict[str, str], timeout: int = 180) -> list[dict[str, Any]]:
    await _client(nb, cwd, timeout).async_execute(env=env)
    return _outputs(nb)


def assert_clean(outputs: list[dict[str, Any]]) -> None:
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors[0].get("traceback")
    text = "".join(o.get("text", "") for o in outputs) + "".join(
        str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    assert "Traceback" not in text


def one_cell(source: str) -> Any:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(source))
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path, db_url: str, data_dir: Path) -> None:
    env = {**os.environ, "IMAGEN_DATABASE_URL": db_url, "IMAGEN_DATA_DIR": str(data_dir)}
    nb = nbformat.read(path, as_version=4)
    outputs = run_notebook(nb, path.parent, env)
    assert_clean(outputs)
    kinds = {k for o in outputs for k in o.get("data", {})}
    if path.stem == "quickstart":
        text = "".join(o.get("text", "") for o in outputs)
        assert "size: 'huge' must look like 1024x1024" in text
        assert {"image/png", "text/html", "application/vnd.jupyter.widget-view+json"} <= kinds
    if path.stem in ("prompt-iteration", "worker-pool"):
        assert "text/html" in kinds
        html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
        assert html.count("data:image/webp;base64,") >= 6


def test_the_committed_notebooks_carry_no_outputs() -> None:
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs; strip them"


SWEEP = """
from imagen_canvas import sweep
sweep(["a red fox"], seeds=3, size="64x64")
"""


def test_a_sweep_in_a_kernel_shows_its_progress_as_a_notebook_widget_bar(db_url: str, data_dir: Path) -> None:
    """tqdm.auto's choice in a kernel: an ipywidgets bar (HBox of a FloatProgress) that reaches the
    total, not a text bar in the cell's stderr."""
    env = {**os.environ, "IMAGEN_DATABASE_URL": db_url, "IMAGEN_DATA_DIR": str(data_dir)}
    nb = one_cell(SWEEP)
    outputs = run_notebook(nb, REPO, env)
    assert_clean(outputs)
    views = [
        o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
        for o in outputs
        if o.get("output_type") == "display_data" and "application/vnd.jupyter.widget-view+json" in o["data"]
    ]
    assert len(views) == 1, outputs
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    shown = state[views[0]]
    assert shown["model_name"] == "HBoxModel"
    parts = [state[ref.removeprefix("IPY_MODEL_")] for ref in shown["state"]["children"]]
    (bar,) = [p for p in parts if p["model_name"] == "FloatProgressModel"]
    assert (bar["state"]["value"], bar["state"]["max"]) == (3, 3)
    assert "sweep" in " ".join(str(p["state"].get("value", "")) for p in parts if p["model_name"] == "HTMLModel")
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    assert "3/3" not in stderr  # no text bar as well


@pytest.fixture
def fresh_data_dir() -> Iterator[Path]:
    """A data directory no embedded database has used yet (the embedded server runs as its own user)."""
    root = Path(tempfile.mkdtemp(prefix="imagen-fresh-"))
    os.chmod(root, 0o755)
    yield root / "data"
    from imagen_worker.embedded import release_embedded

    release_embedded(root / "data")
    shutil.rmtree(root, ignore_errors=True)


def _fresh_env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEN_")}
    env["IMAGEN_DATA_DIR"] = str(data)
    return env


GENERATE = """
from imagen_canvas import generate
generate("a red fox")
"""


def test_generate_in_a_fresh_kernel_on_a_fresh_embedded_database_needs_no_set_up(fresh_data_dir: Path) -> None:
    outputs = run_notebook(one_cell(GENERATE), REPO, _fresh_env(fresh_data_dir))
    assert_clean(outputs)
    shown = [o for o in outputs if o.get("output_type") == "execute_result"]
    assert shown and {"image/png", "text/html"} <= set(shown[0]["data"])
    said = [o for o in outputs if o.get("output_type") == "stream" and "started one in this kernel" in o["text"]]
    # No live worker: the kernel ran it, and said so once, under this cell (no logging set up to see it).
    assert len(said) == 1 and said[0]["text"].count("started one in this kernel") == 1, outputs
    assert (fresh_data_dir / "pgdata").is_dir()


@pytest.fixture
def jp_server_config(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    if "fresh_data_dir" in request.fixturenames:
        monkeypatch.setenv("IMAGEN_DATA_DIR", str(request.getfixturevalue("fresh_data_dir")))
        monkeypatch.delenv("IMAGEN_DATABASE_URL", raising=False)
    return {
        "ServerApp": {"jpserver_extensions": {"imagen_canvas_server": True}},
        "ImagenCanvasApp": {"poll_interval": 0.5},
    }


async def test_generate_in_a_fresh_kernel_uses_the_server_extensions_worker(
    jp_fetch: Any, jp_serverapp: Any, fresh_data_dir: Path
) -> None:
    health = await ready(jp_fetch)
    assert health["database"] == "embedded"
    deadline = time.monotonic() + 20
    while not health["workers"]:
        assert time.monotonic() < deadline, "the extension's worker never registered"
        await asyncio.sleep(0.1)
        health = await ready(jp_fetch)
    (server_worker,) = health["workers"]
    outputs = await arun_notebook(one_cell(GENERATE), REPO, _fresh_env(fresh_data_dir))
    assert_clean(outputs)
    shown = [o for o in outputs if o.get("output_type") == "execute_result"]
    assert shown and "image/png" in shown[0]["data"]
    assert "started one in this kernel" not in "".join(o.get("text", "") for o in outputs)
    pool = jp_serverapp.web_app.settings["imagen"].pool
    async with pool.acquire() as conn:
        locked_by = await conn.fetchval("select locked_by from imagen.jobs where status = 'done'")
    assert locked_by == server_worker["id"]
    for app in jp_serverapp.extension_manager.extension_apps.get("imagen_canvas_server", ()):
        await app.stop_extension()
