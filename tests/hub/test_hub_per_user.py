"""A real JupyterHub, layout (a): each user's server runs its own worker with its own login.
What one user (B) can reach of another's (A): nothing, through REST, the websocket, SQL from B's own
kernel (even after setting request.jwt.claims to A's id), files on disk and file URLs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from imagen_worker.users import add_user

from .harness import (
    PROBE_ROOTS,
    Cluster,
    Hub,
    call,
    jupyterhub,
    run_in_kernel,
    secrets_probe,
    signed_by,
    spawn,
    url_password,
    user_credentials,
)

A, B = "imagen-alice", "imagen-bob"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub(cluster: Cluster, venv: Any) -> Iterator[Hub]:
    with jupyterhub(cluster, venv, layout="per-user") as running:
        yield running


@pytest.fixture(scope="module")
def tokens(hub: Hub) -> dict[str, str]:
    return {user: spawn(hub, user) for user in (A, B)}


def wait_done(hub: Hub, user: str, token: str, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, job = call(hub, "GET", f"user/{user}/imagen/api/jobs/{job_id}", token=token)
        assert status == 200, job
        if job["status"] in ("done", "failed", "cancelled"):
            return dict(job)
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


@pytest.fixture(scope="module")
def a_job(hub: Hub, tokens: dict[str, str]) -> dict[str, Any]:
    """A's canvas and a done job of A's on it."""
    canvas_id = "5a1c9a2e-0000-4000-8000-00000000000a"
    status, _ = call(
        hub,
        "PUT",
        f"user/{A}/imagen/api/canvases/{canvas_id}",
        token=tokens[A],
        body={"version": 0, "name": "A's secret canvas", "nodes": [], "edges": []},
    )
    assert status == 201
    status, job = call(
        hub,
        "POST",
        f"user/{A}/imagen/api/jobs",
        token=tokens[A],
        body={"prompt": "A's secret prompt", "canvas_id": canvas_id, "seed": 5},
    )
    assert status == 201, job
    return wait_done(hub, A, tokens[A], job["id"])


def test_a_users_job_completes_and_its_events_reach_that_users_socket_only(hub: Hub, tokens: dict[str, str]) -> None:
    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with aiohttp.ClientSession() as session:
            ws_a = await session.ws_connect(
                f"{hub.url}user/{A}/imagen/api/events", headers={"Authorization": f"token {tokens[A]}"}
            )
            ws_b = await session.ws_connect(
                f"{hub.url}user/{B}/imagen/api/events", headers={"Authorization": f"token {tokens[B]}"}
            )
            hello_a, hello_b = await ws_a.receive_json(timeout=10), await ws_b.receive_json(timeout=10)
            assert hello_a["kind"] == hello_b["kind"] == "hello"
            assert hello_a["owner_user_id"] != hello_b["owner_user_id"]
            async with session.post(
                f"{hub.url}user/{A}/imagen/api/jobs",
                json={"prompt": "a fox"},
                headers={"Authorization": f"token {tokens[A]}"},
            ) as r:
                job = await r.json()
            seen_a: list[dict[str, Any]] = []
            while not (seen_a and seen_a[-1].get("status") == "done" and seen_a[-1].get("job_id") == job["id"]):
                seen_a.append(await ws_a.receive_json(timeout=30))
            seen_b: list[dict[str, Any]] = []
            with pytest.raises(asyncio.TimeoutError):
                while True:
                    seen_b.append(await ws_b.receive_json(timeout=2))
            await ws_a.close()
            await ws_b.close()
            return seen_a, seen_b

    seen_a, seen_b = asyncio.run(go())
    job_id = seen_a[-1]["job_id"]
    trail = [m["status"] for m in seen_a if m["kind"] == "state" and m["job_id"] == job_id]
    assert trail == ["pending", "running", "done"], seen_a
    assert not [m for m in seen_b if m.get("kind") in ("state", "progress", "waiting")]


def test_b_sees_none_of_as_jobs_images_canvases_or_events_through_rest(
    hub: Hub, tokens: dict[str, str], a_job: dict[str, Any]
) -> None:
    token = tokens[B]
    for path in (
        f"jobs/{a_job['id']}",
        f"jobs/{a_job['id']}/events",
        f"images/{a_job['image_id']}",
        f"images/{a_job['image_id']}/content",
        f"canvases/{a_job['canvas_id']}",
    ):
        status, answer = call(hub, "GET", f"user/{B}/imagen/api/{path}", token=token)
        assert status == 404, (path, status, answer)
    status, answer = call(hub, "POST", f"user/{B}/imagen/api/jobs/{a_job['id']}/cancel", token=token)
    assert status == 404
    _, page = call(hub, "GET", f"user/{B}/imagen/api/jobs", token=token)
    assert a_job["id"] not in {j["id"] for j in page["jobs"]}
    _, listing = call(hub, "GET", f"user/{B}/imagen/api/canvases", token=token)
    assert a_job["canvas_id"] not in {c["id"] for c in listing["canvases"]}


def test_bs_token_is_refused_on_as_server(hub: Hub, tokens: dict[str, str], a_job: dict[str, Any]) -> None:
    for path in ("imagen/api/jobs", f"imagen/api/jobs/{a_job['id']}", "imagen/api/health"):
        status, _ = call(hub, "GET", f"user/{A}/{path}", token=tokens[B])
        assert status in (302, 403), (path, status)
    status, _ = call(hub, "POST", f"user/{A}/imagen/api/jobs", token=tokens[B], body={"prompt": "x"})
    assert status in (302, 403)


B_KERNEL_PROBE = """
import asyncio, json, os, asyncpg
A_OWNER, A_JOB = {a_owner!r}, {a_job!r}
url = os.environ["IMAGEN_DATABASE_URL"]
report = {{}}
async def probe():
    conn = await asyncpg.connect(url)
    report["mine"] = str(await conn.fetchval("select imagen.current_owner()"))
    for table in ("jobs", "images", "job_events", "canvases", "canvas_nodes", "canvas_edges"):
        report[table] = await conn.fetchval(f"select count(*) from imagen.{{table}} where owner_user_id = $1", A_OWNER)
    await conn.execute("select set_config('request.jwt.claims', $1, false)", json.dumps({{"sub": A_OWNER, "role": "authenticated"}}))
    report["jobs_with_a_claims"] = await conn.fetchval("select count(*) from imagen.jobs where owner_user_id = $1", A_OWNER)
    report["all_jobs_with_a_claims"] = await conn.fetchval("select count(*) from imagen.jobs where owner_user_id <> imagen.current_owner()")
    for label, sql in [("set_role", "set role authenticated"), ("set_role_service", "set role service_role"),
                       ("users", "select * from imagen.users"), ("slots", "select * from imagen.provider_slots"),
                       ("cancel", f"select imagen.cancel_job('{{A_JOB}}')"),
                       ("image_for_a_job", "insert into imagen.images (owner_user_id, job_id, bucket, path, content_type, width, height, bytes, sha256) "
                                           f"values (imagen.current_owner(), '{{A_JOB}}', 'images', imagen.current_owner() || '/x.png', 'image/png', 1, 1, 1, repeat('0', 64))"),
                       ("image_at_a_path", "insert into imagen.images (owner_user_id, bucket, path, content_type, width, height, bytes, sha256) "
                                           f"values (imagen.current_owner(), 'images', '{{A_OWNER}}/' || gen_random_uuid() || '.png', 'image/png', 1, 1, 1, repeat('0', 64))"),
                       ("event_on_a_job", f"insert into imagen.job_events (job_id, owner_user_id, kind) values ('{{A_JOB}}', imagen.current_owner(), 'log')"),
                       ("insert_as_a", f"insert into imagen.jobs (owner_user_id, prompt) values ('{{A_OWNER}}', 'x')")]:
        try:
            await conn.execute(sql)
            report[label] = "allowed"
        except asyncpg.PostgresError as exc:
            report[label] = type(exc).__name__
    report["limits_seen"] = await conn.fetchval("select count(*) from imagen.provider_limits")
    report["update_a_job"] = await conn.execute("update imagen.jobs set status = 'cancelled' where id = $1", A_JOB)
    await conn.close()
    host = url.rsplit("@", 1)[1]
    for role in ("postgres", url.split("//", 1)[1].split(":", 1)[0]):
        try:
            other = await asyncpg.connect(f"postgresql://{{role}}@{{host}}")
            await other.close()
            report["login_" + role[:8]] = "allowed"
        except Exception as exc:
            report["login_" + role[:8]] = type(exc).__name__
await probe()  # the kernel runs top-level await
print(json.dumps(report))
"""


def probe_code(a_owner: str, a_job: str) -> str:
    return B_KERNEL_PROBE.format(a_owner=a_owner, a_job=a_job)


def test_from_bs_own_kernel_sql_reaches_none_of_as_rows_even_with_as_claims(
    hub: Hub, tokens: dict[str, str], a_job: dict[str, Any], cluster: Cluster
) -> None:
    async def pool_limit() -> None:
        conn = await asyncpg.connect(cluster.admin_url)
        try:
            await conn.execute(
                "insert into imagen.provider_limits (provider, max_concurrent) values ('openai', 2) "
                "on conflict (provider) do nothing"
            )
        finally:
            await conn.close()

    asyncio.run(pool_limit())
    out = run_in_kernel(hub, B, tokens[B], probe_code(a_job["owner_user_id"], a_job["id"]))
    report = json.loads(out.strip().splitlines()[-1])
    assert report["mine"] != a_job["owner_user_id"]
    for table in ("jobs", "images", "job_events", "canvases", "canvas_nodes", "canvas_edges"):
        assert report[table] == 0, table
    assert report["jobs_with_a_claims"] == 0 and report["all_jobs_with_a_claims"] == 0
    assert report["set_role"] == report["set_role_service"] == "InsufficientPrivilegeError"
    assert report["users"] == report["slots"] == "InsufficientPrivilegeError"
    assert report["limits_seen"] == 0  # the pool's limits exist, but not for a user's own worker
    assert report["cancel"] == "NoDataFoundError"
    assert report["insert_as_a"] == "InsufficientPrivilegeError"  # row-level security: not B's row
    # B's own worker login writes images and events of B's own jobs only, in B's own folder.
    assert report["image_for_a_job"] == report["image_at_a_path"] == report["event_on_a_job"]
    assert report["event_on_a_job"] == "InsufficientPrivilegeError"
    assert report["update_a_job"] == "UPDATE 0"
    # Without a password, neither the admin login nor B's own role gets in (scram-sha-256 only).
    assert report["login_postgres"] == report["login_imagen_u"] == "InvalidPasswordError"

    async def unchanged() -> str:
        conn = await asyncpg.connect(cluster.admin_url)
        try:
            return str(await conn.fetchval("select status from imagen.jobs where id = $1::uuid", a_job["id"]))
        finally:
            await conn.close()

    assert asyncio.run(unchanged()) == "done"


def test_as_image_files_and_file_urls_are_out_of_bs_reach(
    hub: Hub, tokens: dict[str, str], a_job: dict[str, Any]
) -> None:
    image = a_job["image"]
    # A's URL loads for A through A's server...
    url = image["url"].split("/", 1)[1]  # user/imagen-alice/imagen/files/...
    status, _ = call(hub, "GET", url, token=tokens[A])
    assert status == 200
    # ...is refused for B (the hub keeps B's token off A's server), and on B's server, where B's
    # server neither has A's signing key nor serves A's owner folder.
    status, _ = call(hub, "GET", url, token=tokens[B])
    assert status in (302, 403)
    status, _ = call(hub, "GET", url.replace(f"user/{A}/", f"user/{B}/"), token=tokens[B])
    assert status == 403
    # Nor does a URL for A's path signed with B's own key (which B's code can read) open it there.
    status, _ = call(
        hub, "GET", f"user/{B}/imagen/files/images/{image['path']}?{signed_by(B, image['path'])}", token=tokens[B]
    )
    assert status == 403
    # On disk: A's images are A's alone.
    code = f"""
import glob, os
store = os.path.expanduser("~{A}/.local/share/imagen-canvas/store/images")
for path in (store, os.path.join(store, {image["owner_user_id"]!r}),
             os.path.join(store, {image["path"]!r})):
    try:
        open(path, "rb").read() if os.path.splitext(path)[1] else os.listdir(path)
        print(path, "READ")
    except PermissionError:
        print(path, "DENIED")
"""
    out = run_in_kernel(hub, B, tokens[B], code)
    lines = out.strip().splitlines()
    assert lines[1].endswith("DENIED") and lines[2].endswith("DENIED"), out


def test_a_replay_from_the_beginning_on_bs_socket_holds_none_of_as_jobs(
    hub: Hub, tokens: dict[str, str], a_job: dict[str, Any]
) -> None:
    """`?since=` a cursor before anything happened: B's socket replays B's own events, none of A's."""
    status, mine = call(hub, "POST", f"user/{B}/imagen/api/jobs", token=tokens[B], body={"prompt": "B's own"})
    assert status == 201, mine
    wait_done(hub, B, tokens[B], mine["id"])
    _, page = call(hub, "GET", f"user/{A}/imagen/api/jobs", token=tokens[A])
    a_jobs = {j["id"] for j in page["jobs"]} | {a_job["id"]}

    async def replay() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                f"{hub.url}user/{B}/imagen/api/events?since=1:1:", headers={"Authorization": f"token {tokens[B]}"}
            ) as ws,
        ):
            with pytest.raises(asyncio.TimeoutError):
                while True:
                    seen.append(await ws.receive_json(timeout=3))
        return seen

    seen = asyncio.run(replay())
    assert seen[0]["kind"] == "hello"
    replayed = {m.get("job_id") for m in seen[1:]}
    assert mine["id"] in replayed  # the replay ran: B's own job is in it
    assert not replayed & a_jobs
    assert a_job["owner_user_id"] not in json.dumps(seen)


def test_bs_kernel_finds_no_credential_of_as_or_of_the_services_anywhere_it_can_read(
    hub: Hub, tokens: dict[str, str], cluster: Cluster
) -> None:
    """Every process environment B's code can read (/proc/*/environ: B's own processes), /tmp, other
    users' homes: none holds A's database password, hub token or URL-signing key, nor the admin's."""
    secrets = {**user_credentials(A), "the admin's database password": url_password(cluster.admin_url)}
    report = json.loads(
        run_in_kernel(hub, B, tokens[B], secrets_probe(secrets, PROBE_ROOTS), timeout=300).strip().splitlines()[-1]
    )
    assert report["environ_read"] >= 2 and report["files_read"] > 0, report  # the probe read something
    assert report["found"] == [], report


def test_a_user_over_the_quota_gets_a_clear_429(hub: Hub, tokens: dict[str, str], cluster: Cluster) -> None:
    async def zero_budget() -> None:
        conn = await asyncpg.connect(cluster.admin_url)
        try:
            await add_user(conn, B, worker=True, max_cost_per_day=0)  # nothing more today
        finally:
            await conn.close()

    asyncio.run(zero_budget())
    status, answer = call(hub, "POST", f"user/{B}/imagen/api/jobs", token=tokens[B], body={"prompt": "one more"})
    assert status == 429, answer
    assert answer["error"]["code"] == "too_many_pending" and "quota" in answer["error"]["message"]
