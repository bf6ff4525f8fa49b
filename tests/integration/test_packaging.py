"""`pip install ./worker` alone gives a working worker without Jupyter, and the embedded database
starts with no configuration, as root and as a normal user, and is reused on the next start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import REPO

pytestmark = pytest.mark.slow

# A system interpreter a normal user can run (the developer's may live under a private home).
BASE_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
TEST_USER = "imagen-tester"

START_SCRIPT = """
import json, sys, time
from pathlib import Path
t = time.perf_counter()
from imagen_worker.embedded import embedded_database_url
url = embedded_database_url(Path(sys.argv[1]))
started = time.perf_counter() - t
import asyncio, asyncpg
async def check():
    c = await asyncpg.connect(url)
    v = await c.fetchval("show server_version")
    await c.close()
    return v
print(json.dumps({"seconds": round(started, 3), "version": asyncio.run(check()), "url_is_socket": "host=/" in url}))
"""


@pytest.fixture(scope="module")
def worker_venv() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="imagen-pkg-"))
    os.chmod(root, 0o755)
    venv = root / "venv"
    subprocess.run([BASE_PYTHON, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(REPO / "worker")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert pip.returncode == 0, pip.stderr[-4000:]
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    yield venv
    shutil.rmtree(root, ignore_errors=True)


def test_pip_install_worker_alone_gives_a_working_cli_without_jupyter(worker_venv: Path) -> None:
    py = str(worker_venv / "bin" / "python")
    imagen = str(worker_venv / "bin" / "imagen")
    assert (
        subprocess.run(
            [py, "-c", "import imagen_worker, imagen_worker.queue, imagen_worker.pipeline"], timeout=60
        ).returncode
        == 0
    )
    for sub in ("migrate", "worker"):
        out = subprocess.run([imagen, sub, "--help"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "--database-url" in out.stdout
    for jupyter_module in ("jupyter_server", "jupyterlab", "notebook", "ipykernel", "anywidget"):
        probe = subprocess.run([py, "-c", f"import {jupyter_module}"], capture_output=True, timeout=60)
        assert probe.returncode != 0, f"{jupyter_module} is installed by `pip install ./worker`"
    # The migrations ship inside the wheel.
    listing = subprocess.run(
        [py, "-c", "from imagen_worker.migrate import load_migrations; print(len(load_migrations()))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert int(listing.stdout) >= 4


def _start(cmd_prefix: list[str], py: str, data_dir: Path, env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run(
        [*cmd_prefix, py, "-c", START_SCRIPT, str(data_dir)], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEN_")}
    env["HOME"] = str(home)
    return env


def test_embedded_database_starts_without_configuration_as_root_and_reuses(
    worker_venv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    py = str(worker_venv / "bin" / "python")
    data = Path(tempfile.mkdtemp(prefix="imagen-embedded-"))
    try:
        first = _start([], py, data / "d", _env(data))
        second = _start([], py, data / "d", _env(data))
        assert first["url_is_socket"] and second["url_is_socket"]
        assert (data / "d" / "pgdata" / "PG_VERSION").exists()
        with capsys.disabled():
            print(
                f"\nembedded start (uid {os.geteuid()}): first {first['seconds']} s, second {second['seconds']} s, PG {first['version']}"
            )
    finally:
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a normal user to run as")
def test_embedded_database_starts_as_a_normal_user(worker_venv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if subprocess.run(["id", TEST_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER], check=True)
    home = Path(tempfile.mkdtemp(prefix="imagen-user-"))
    try:
        shutil.chown(home, TEST_USER, TEST_USER)
        env = _env(home)
        env.pop("XDG_DATA_HOME", None)
        first = _start(["runuser", "-u", TEST_USER, "--"], str(worker_venv / "bin" / "python"), home / "d", env)
        second = _start(["runuser", "-u", TEST_USER, "--"], str(worker_venv / "bin" / "python"), home / "d", env)
        owner = (home / "d" / "pgdata").stat().st_uid
        assert owner == int(subprocess.check_output(["id", "-u", TEST_USER]).strip())
        with capsys.disabled():
            print(f"\nembedded start ({TEST_USER}): first {first['seconds']} s, second {second['seconds']} s")
    finally:
        shutil.rmtree(home, ignore_errors=True)
