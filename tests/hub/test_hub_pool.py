"""A real JupyterHub, layout (b): the hub runs the shared worker pool as a managed service with the
service credentials and the organisation's provider keys; users' servers run no worker and hold
neither."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    PROBE_ROOTS,
    USERS,
    Cluster,
    Hub,
    call,
    jupyterhub,
    run_in_kernel,
    secrets_probe,
    service_environ,
    signed_by,
    spawn,
    url_password,
    user_credentials,
)

A, B = USERS
# Random per run: a fixed key would be found in every copy of this file a user can read.
ORG_KEY = f"sk-organisation-key-the-pool-alone-holds-{secrets.token_hex(16)}"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub(cluster: Cluster, venv: Any) -> Iterator[Hub]:
    with jupyterhub(cluster, venv, layout="pool", pool_environment={"OPENAI_API_KEY": ORG_KEY}) as running:
        yield running


@pytest.fixture(scope="module")
def tokens(hub: Hub) -> dict[str, str]:
    return {user: spawn(hub, user) for user in (A, B)}


def run_job(hub: Hub, user: str, token: str) -> dict[str, Any]:
    status, job = call(hub, "POST", f"user/{user}/imagen/api/jobs", token=token, body={"prompt": f"{user}'s fox"})
    assert status == 201, job
    deadline = time.monotonic() + 60
    while job["status"] not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        _, job = call(hub, "GET", f"user/{user}/imagen/api/jobs/{job['id']}", token=token)
    return dict(job)


def test_the_pool_runs_both_users_jobs_and_their_servers_run_no_worker(hub: Hub, tokens: dict[str, str]) -> None:
    for user in (A, B):
        _, health = call(hub, "GET", f"user/{user}/imagen/api/health", token=tokens[user])
        assert health["worker"] is None  # no in-process worker
        assert [w["scope"] for w in health["workers"]] == ["all"]  # the hub's pool, live
    jobs = {user: run_job(hub, user, tokens[user]) for user in (A, B)}
    assert {j["status"] for j in jobs.values()} == {"done"}
    assert jobs[A]["owner_user_id"] != jobs[B]["owner_user_id"]


def test_each_users_images_from_the_pool_are_theirs_alone_on_disk(hub: Hub, tokens: dict[str, str]) -> None:
    job = run_job(hub, A, tokens[A])
    image = job["image"]
    target = hub.store / "images" / image["path"]
    folder = target.parent
    alice = pwd.getpwnam(A).pw_uid
    assert (folder.stat().st_uid, folder.stat().st_mode & 0o777) == (alice, 0o700)
    assert (target.stat().st_uid, target.stat().st_mode & 0o777) == (alice, 0o600)
    # A's server serves it; B's kernel cannot read it.
    status, data = call(hub, "GET", f"user/{A}/imagen/api/images/{image['id']}/content", token=tokens[A])
    assert status == 200 and data[:4] == b"\x89PNG"
    out = run_in_kernel(
        hub,
        B,
        tokens[B],
        f"""
for path in ({str(folder)!r}, {str(target)!r}):
    try:
        open(path, "rb").read() if path.endswith(".png") else __import__("os").listdir(path)
        print("READ")
    except PermissionError:
        print("DENIED")
""",
    )
    assert out.split() == ["DENIED", "DENIED"]
    # A's file URL: A's server serves it, B's server refuses it (403: not B's key, not B's owner),
    # also when signed with B's own key, which B's code can read.
    url = image["url"].split("/", 1)[1]
    assert call(hub, "GET", url, token=tokens[A])[0] == 200
    assert call(hub, "GET", url.replace(f"user/{A}/", f"user/{B}/"), token=tokens[B])[0] == 403
    forged = f"user/{B}/imagen/files/images/{image['path']}?{signed_by(B, image['path'])}"
    assert call(hub, "GET", forged, token=tokens[B])[0] == 403


def test_the_pool_runs_with_a_login_of_its_own_not_the_admins(hub: Hub, cluster: Cluster) -> None:
    env = service_environ(hub, "imagen_worker worker")
    login = env["IMAGEN_DATABASE_URL"].split("//", 1)[1].split(":", 1)[0]
    assert login.startswith("imagen_pool_"), login
    assert url_password(cluster.admin_url) not in json.dumps(env)
    assert env["IMAGEN_STORE_OWNERS"] == "hub" and env["IMAGEN_HUB_UNIX_USER"] == "{name}"


def test_neither_users_kernel_finds_the_service_credentials_the_keys_or_the_other_users_anywhere(
    hub: Hub, tokens: dict[str, str], cluster: Cluster
) -> None:
    """Every process environment a user's code can read (/proc/*/environ: their own processes), /tmp
    (the hub's folder and the store included), other users' homes: no admin or pool password, no
    organisation key, nothing of the other user's."""
    pool = service_environ(hub, "imagen_worker worker")
    service = {
        "the admin's database password": url_password(cluster.admin_url),
        "the pool's database password": url_password(pool["IMAGEN_DATABASE_URL"]),
        "the organisation's key": ORG_KEY,
    }
    for user, other in ((A, B), (B, A)):
        secrets = {**service, **user_credentials(other)}
        out = run_in_kernel(hub, user, tokens[user], secrets_probe(secrets, (*PROBE_ROOTS, str(hub.root))), timeout=300)
        report = json.loads(out.strip().splitlines()[-1])
        assert report["environ_read"] >= 2 and report["files_read"] > 0, report
        assert report["found"] == [], (user, report)
        env = json.loads(run_in_kernel(hub, user, tokens[user], "import json, os; print(json.dumps(dict(os.environ)))"))
        assert env["IMAGEN_DATABASE_URL"].split("//")[1].split(":")[0].startswith("imagen_u_")
    assert os.stat(hub.root).st_mode & 0o777 == 0o700
    assert Path(hub.root / "jupyterhub_config.py").read_text().count(url_password(cluster.admin_url)) == 1
