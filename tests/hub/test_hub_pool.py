"""A real JupyterHub, layout (b): the hub runs the shared worker pool as a managed service with the
service credentials and the organisation's provider keys; users' servers run no worker and hold
neither."""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import USERS, Cluster, Hub, call, jupyterhub, run_in_kernel, spawn

A, B = USERS
ORG_KEY = "sk-organisation-key-the-pool-alone-holds-0123456789"
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


def test_neither_users_server_holds_the_service_credentials_or_the_organisations_keys(
    hub: Hub, tokens: dict[str, str], cluster: Cluster
) -> None:
    admin_password = cluster.admin_url.split("//", 1)[1].split("@", 1)[0].split(":", 1)[1]
    probe = f"""
import json, os, glob
secrets = {[admin_password, ORG_KEY]!r}
found = [k for k, v in os.environ.items() if any(s in v for s in secrets)]
# everything the server could read in its own home and the hub's folder
readable = []
for root in (os.path.expanduser("~"), {str(hub.root)!r}):
    for path in glob.glob(root + "/**", recursive=True):
        try:
            with open(path, errors="ignore") as fh:
                if any(s in fh.read() for s in secrets):
                    readable.append(path)
        except (IsADirectoryError, PermissionError, OSError):
            pass
print(json.dumps({{"env": found, "files": readable, "user": os.environ["IMAGEN_DATABASE_URL"].split("//")[1].split(":")[0]}}))
"""
    for user in (A, B):
        report = json.loads(run_in_kernel(hub, user, tokens[user], probe).strip().splitlines()[-1])
        assert report == {**report, "env": [], "files": []}, report
        assert report["user"].startswith("imagen_u_")
    assert os.stat(hub.root).st_mode & 0o777 == 0o700
    assert Path(hub.root / "jupyterhub_config.py").read_text().count(admin_password) == 1
