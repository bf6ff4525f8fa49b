"""End-to-end helpers: a real JupyterLab (or Notebook 7) server in a subprocess, and Debian's Chromium
driven by Playwright, as a user would use them."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
BUNDLE = Path(__file__).resolve().parents[2] / "imagen_canvas" / "static" / "canvas.js"
BUILD_COMMAND = "cd js && npm ci && npm run build"


def require_bundle(bundle: Path = BUNDLE) -> None:
    """Fail, never skip, when the canvas bundle is missing: a browser test without it tests nothing, and a
    skip would let a broken build pass CI unnoticed."""
    if not bundle.is_file():
        pytest.fail(
            f"the canvas bundle {bundle} is not built: run `{BUILD_COMMAND}` (or `pip install -e .`, which runs it)",
            pytrace=False,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running `jupyter lab` / `jupyter notebook` with the imagen extension (unless disabled)."""

    app: str
    root: Path
    port: int
    token: str
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}{path}{sep}token={self.token}"

    def api(self, path: str, method: str = "GET", body: Any = None) -> Any:
        request = urllib.request.Request(
            f"{self.base}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
        return json.loads(text) if text else None

    def write_notebook(self, name: str, cells: list[str]) -> str:
        nb = {
            "cells": [
                {
                    "cell_type": "code",
                    "execution_count": None,
                    "id": f"c{i}",
                    "metadata": {},
                    "outputs": [],
                    "source": source,
                }
                for i, source in enumerate(cells)
            ],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        (self.root / name).write_text(json.dumps(nb))
        return name

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def jupyter(app: str, root: Path, env: dict[str, str], *args: str) -> Iterator[Server]:
    """Start `jupyter <app>` on a free port, wait until it answers, stop it afterwards."""
    port, token = free_port(), secrets.token_hex(16)
    log = root.parent / f"{app}-{port}.log"
    # Settings and workspaces of this server alone (not the machine's): the light theme, no news popup.
    settings = root.parent / f"lab-settings-{port}"
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {
        **env,
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(root.parent / f"lab-workspaces-{port}"),
    }
    command = [
        sys.executable,
        "-m",
        "jupyter",
        app,
        f"--port={port}",
        "--ip=127.0.0.1",
        "--no-browser",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.disable_check_xsrf=False",
        *args,
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(app, root, port, token, process, log, env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.api("api/status")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter {app} did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.2)
        yield server
    finally:
        server.stop()


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def open_notebook(page: Any, server: Server, name: str) -> None:
    """Open a notebook and wait for its kernel to be idle."""
    if server.app == "lab":
        page.goto(server.url(f"lab/tree/{name}?reset"))  # a fresh workspace: no tab of an earlier test
    else:
        page.goto(server.url(f"notebooks/{name}"))
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    kernel_ready(page)


def kernel_ready(page: Any, timeout: float = 60.0) -> None:
    """Wait until the notebook's kernel is started and idle, choosing it if Jupyter asks which."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select = page.locator(".jp-Dialog .jp-mod-accept")
        if select.count():
            select.first.click()
        status = page.evaluate(
            "() => { const i = document.querySelector('.jp-Notebook-ExecutionIndicator');"
            " return i ? i.getAttribute('data-status') : null; }"
        )
        named = page.locator(".jp-KernelName, .jp-Toolbar-kernelName").first
        if status == "idle" and (not named.count() or "No Kernel" not in named.inner_text()):
            return
        page.wait_for_timeout(200)
    raise TimeoutError("the kernel never became idle")


def run_all_cells(page: Any) -> None:
    """Run → Run All Cells, from the menu bar (JupyterLab and Notebook 7 share it), until the first cell's
    prompt shows it queued or run: on a loaded machine a click on a notebook still settling can be lost
    (its prompt stays `[ ]:`), and then, and only then, it is made again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(3):
        # The menu acts on the current notebook: make it current by selecting its first cell.
        page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first.click()
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function(
                "() => { const p = document.querySelector('.jp-Notebook .jp-Cell .jp-InputArea-prompt');"
                " return p !== null && /\\[[*0-9]/.test(p.textContent || ''); }",
                timeout=10_000,
            )
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")  # close a menu left open
    raise TimeoutError("Run All Cells never started the notebook's cells")


def execute_in_notebook_kernel(server: Server, notebook: str, code: str) -> str:
    """Run `code` in the kernel of the open notebook `notebook` (its namespace: the cells' variables)."""
    import aiohttp

    from ..conftest import run_sync
    from ..kernel_client import execute

    (session,) = [s for s in server.api("api/sessions") if s["path"].endswith(notebook)]
    headers = {"Authorization": f"token {server.token}"}

    async def go() -> str:
        async with aiohttp.ClientSession(headers=headers) as client:
            url = f"ws://127.0.0.1:{server.port}/api/kernels/{session['kernel']['id']}/channels"
            return await execute(client, url, code)

    return run_sync(go)  # in a thread: Playwright's sync API keeps a loop running here
