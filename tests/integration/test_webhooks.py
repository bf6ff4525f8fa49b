"""The webhook receiver on real Postgres: verified deliveries are logged once as `webhook` job events that
NOTIFY the worker; forged, unsigned, stale and replayed deliveries change nothing; duplicates are
acknowledged and ignored; the HTTP endpoint answers each delivery once its event is queued;
`imagen worker --webhook-port` serves it. (How fast it answers is a benchmark's question, not a test's.)"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from standardwebhooks import Webhook

from imagen_worker.db import create_pool
from imagen_worker.jobs import submit_job
from imagen_worker.spec import parse_spec
from imagen_worker.webhook_server import WebhookServer
from imagen_worker.webhooks import WebhookReceiver, signed_callback_url, url_token

from ..conftest import IMAGEN

pytestmark = pytest.mark.asyncio

OWNER = uuid.UUID("5f1d0a52-8f4b-4b8e-9a53-3a8f8a0c0004")
REPLICATE_SECRET = "whsec_" + base64.b64encode(b"replicate-signing-key-for-tests!").decode()
MJ_SECRET = "imagen-webhook-secret-for-tests-0123456789"
PREDICTION = "pred0123456789abcdefghijkl"


def prediction(status: str = "succeeded", prediction_id: str = PREDICTION) -> str:
    return json.dumps(
        {
            "id": prediction_id,
            "status": status,
            "output": [f"https://replicate.delivery/xezq/{prediction_id}/out-0.png"],
            "error": None,
            "logs": "Using seed: 1234\n100%|██████████| 4/4",
            "input": {"prompt": "a red fox"},
            "metrics": {"predict_time": 1.25},
        }
    )


def signed(
    body: str, *, secret: str = REPLICATE_SECRET, msg_id: str | None = None, at: datetime | None = None
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{secrets.token_hex(8)}"
    when = at or datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body),
        "content-type": "application/json",
    }


@pytest_asyncio.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db_url, migrate=False, min_size=1, max_size=2)
    yield pool
    await pool.close()


@pytest_asyncio.fixture
async def receiver(pool: asyncpg.Pool) -> WebhookReceiver:
    return WebhookReceiver(pool, {"replicate": REPLICATE_SECRET, "midjourney": MJ_SECRET})


async def job_with(db: asyncpg.Connection, provider: str, provider_job_id: str) -> uuid.UUID:
    job_id = await submit_job(db, parse_spec({"prompt": "a red fox"}), owner_user_id=OWNER, provider=provider)
    await db.execute("update imagen.jobs set provider_job_id = $2 where id = $1", job_id, provider_job_id)
    return job_id


async def snapshot(db: asyncpg.Connection) -> tuple[Any, ...]:
    """Everything a delivery could change: the jobs rows and the job_events rows."""
    jobs = await db.fetch("select * from imagen.jobs order by id")
    events = await db.fetch("select id, job_id, kind, payload, delivery_id from imagen.job_events order by id")
    return tuple(tuple(r.items()) for r in jobs), tuple(tuple(r.items()) for r in events)


async def webhook_events(db: asyncpg.Connection, job_id: uuid.UUID) -> list[asyncpg.Record]:
    return await db.fetch(
        "select payload, delivery_id from imagen.job_events where job_id = $1 and kind = 'webhook' order by id", job_id
    )


async def test_a_verified_delivery_is_logged_once_as_a_small_webhook_event_that_notifies(
    db: asyncpg.Connection, db_url: str, receiver: WebhookReceiver
) -> None:
    job_id = await job_with(db, "replicate", PREDICTION)
    listener = await asyncpg.connect(db_url)
    heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    # A notification is a JSON array of the statement's events (migration 0003).
    await listener.add_listener("imagen_job_events", lambda *a: [heard.put_nowait(e) for e in json.loads(a[3])])
    try:
        body = prediction()
        headers = signed(body)
        status, answer = await receiver.handle("replicate", headers, body.encode())
        announced = await asyncio.wait_for(heard.get(), 5)
    finally:
        await listener.close()

    assert status == 200 and answer["status"] == "accepted"
    [event] = await webhook_events(db, job_id)
    assert event["delivery_id"] == f"replicate:{headers['webhook-id']}"
    assert event["payload"] == {
        "provider": "replicate",
        "provider_job_id": PREDICTION,
        "status": "succeeded",
        "output": [f"https://replicate.delivery/xezq/{PREDICTION}/out-0.png"],
        "seed": 1234,
        "progress": 1.0,
        "predict_time": 1.25,
    }
    assert announced["job_id"] == str(job_id) and announced["kind"] == "webhook"
    assert announced["event_id"] == answer["event_id"]


async def test_a_forged_signature_is_refused_and_changes_nothing(
    db: asyncpg.Connection, receiver: WebhookReceiver
) -> None:
    await job_with(db, "replicate", PREDICTION)
    before = await snapshot(db)
    body = prediction()
    forged_secret = "whsec_" + base64.b64encode(b"not-the-secret-replicate-uses!!!").decode()

    status, answer = await receiver.handle("replicate", signed(body, secret=forged_secret), body.encode())

    assert status == 401 and answer["error"]["code"] == "unauthorized"
    assert "signature" in answer["error"]["message"]
    assert await snapshot(db) == before


async def test_an_unsigned_delivery_is_refused_and_changes_nothing(
    db: asyncpg.Connection, receiver: WebhookReceiver
) -> None:
    await job_with(db, "replicate", PREDICTION)
    before = await snapshot(db)
    body = prediction().encode()

    assert (await receiver.handle("replicate", {"content-type": "application/json"}, body))[0] == 401
    partial = {k: v for k, v in signed(prediction()).items() if k != "webhook-signature"}
    assert (await receiver.handle("replicate", partial, body))[0] == 401
    garbage = {**signed(prediction()), "webhook-signature": "v1"}
    assert (await receiver.handle("replicate", garbage, body))[0] == 401
    assert await snapshot(db) == before


async def test_a_stale_delivery_is_refused_and_changes_nothing(
    db: asyncpg.Connection, receiver: WebhookReceiver
) -> None:
    await job_with(db, "replicate", PREDICTION)
    before = await snapshot(db)
    body = prediction()
    old = signed(body, at=datetime.now(UTC) - timedelta(minutes=5, seconds=30))
    future = signed(body, at=datetime.now(UTC) + timedelta(minutes=6))

    old_status, old_answer = await receiver.handle("replicate", old, body.encode())
    future_status, _ = await receiver.handle("replicate", future, body.encode())

    assert old_status == 401 and "too old" in old_answer["error"]["message"]
    assert future_status == 401
    assert await snapshot(db) == before


async def test_a_replayed_delivery_changes_nothing(db: asyncpg.Connection, receiver: WebhookReceiver) -> None:
    job_id = await job_with(db, "replicate", PREDICTION)
    body = prediction()
    captured = signed(body)
    assert (await receiver.handle("replicate", captured, body.encode()))[0] == 200
    before = await snapshot(db)

    # The captured delivery again; under a new id with its old signature; with another body.
    replay_status, replay_answer = await receiver.handle("replicate", captured, body.encode())
    renamed = {**captured, "webhook-id": f"msg_{secrets.token_hex(8)}"}
    tampered = prediction(status="failed").encode()

    assert (replay_status, replay_answer) == (200, {"status": "duplicate"})
    assert (await receiver.handle("replicate", renamed, body.encode()))[0] == 401
    assert (await receiver.handle("replicate", captured, tampered))[0] == 401
    assert await snapshot(db) == before
    assert len(await webhook_events(db, job_id)) == 1


async def test_a_duplicate_delivery_is_acknowledged_and_ignored(
    db: asyncpg.Connection, receiver: WebhookReceiver
) -> None:
    job_id = await job_with(db, "replicate", PREDICTION)
    body = prediction()
    first = signed(body, msg_id="msg_retried_delivery")
    # The sender's retry: the same webhook-id, a fresh timestamp and signature.
    retry = signed(body, msg_id="msg_retried_delivery", at=datetime.now(UTC) + timedelta(seconds=2))

    assert (await receiver.handle("replicate", first, body.encode()))[0] == 200
    before = await snapshot(db)
    assert await receiver.handle("replicate", retry, body.encode()) == (200, {"status": "duplicate"})
    assert await snapshot(db) == before
    [event] = await webhook_events(db, job_id)
    assert event["delivery_id"] == "replicate:msg_retried_delivery"


async def test_unknown_jobs_providers_and_bodies_change_nothing(
    db: asyncpg.Connection, pool: asyncpg.Pool, receiver: WebhookReceiver
) -> None:
    await job_with(db, "replicate", PREDICTION)
    before = await snapshot(db)
    other = prediction(prediction_id="someone-elses-prediction")
    not_json = "this is not json"

    unconfigured = WebhookReceiver(pool, {})
    long_id = {**signed(other), "webhook-id": "m" * 201}
    long_id["webhook-signature"] = Webhook(REPLICATE_SECRET).sign(long_id["webhook-id"], datetime.now(UTC), other)
    answers = [
        await receiver.handle("replicate", signed(other), other.encode()),
        await receiver.handle("openai", signed(other), other.encode()),
        await receiver.handle("replicate", signed(not_json), not_json.encode()),
        await receiver.handle("replicate", long_id, other.encode()),
        await unconfigured.handle("replicate", signed(prediction()), prediction().encode()),
    ]
    # Every refusal in the API's one error shape: {"error": {"code", "message", "field"?}}.
    assert [(status, body["error"]["code"], body["error"].get("field")) for status, body in answers] == [
        (404, "not_found", None),
        (404, "not_found", None),
        (400, "invalid_json", None),
        (400, "invalid_field", "webhook-id"),
        (401, "unauthorized", None),
    ]
    assert all(set(body) == {"error"} and body["error"]["message"] for _, body in answers)
    assert await snapshot(db) == before


async def test_inline_image_data_in_a_delivery_never_reaches_the_database(
    db: asyncpg.Connection, receiver: WebhookReceiver
) -> None:
    job_id = await job_with(db, "replicate", PREDICTION)
    body = json.dumps(
        {
            "id": PREDICTION,
            "status": "succeeded",
            "output": ["data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"],
            "input": {"prompt": "x" * 20000},
            "logs": "Using seed: 99\n" + "y" * 50000,
            "error": "z" * 5000,
        }
    )

    assert (await receiver.handle("replicate", signed(body), body.encode()))[0] == 200
    [event] = await webhook_events(db, job_id)
    payload = event["payload"]
    assert payload["output"] == [] and payload["inline_output"] is True and payload["seed"] == 99
    assert len(json.dumps(payload)) < 1500 and "data:" not in json.dumps(payload)


async def test_midjourney_callbacks_need_a_valid_unexpired_token_for_their_job(
    db: asyncpg.Connection, receiver: WebhookReceiver
) -> None:
    job_id = await job_with(db, "midjourney", "1712205591372829")
    other_job = await job_with(db, "midjourney", "1712205591372999")
    task = {"id": "1712205591372829", "status": "IN_PROGRESS", "progress": "45%", "imageUrl": None, "failReason": None}
    body = json.dumps(task).encode()
    good = dict(
        httpx.URL(
            signed_callback_url("https://host/imagen/webhooks/midjourney", MJ_SECRET, "midjourney", job_id)
        ).params
    )
    expired_at = int(time.time()) - 10
    expired = {
        "job_id": str(job_id),
        "exp": str(expired_at),
        "token": url_token(MJ_SECRET, "midjourney", job_id, expired_at),
    }
    wrong = {**good, "token": url_token("another-secret-entirely", "midjourney", job_id, int(good["exp"]))}
    elsewhere = dict(httpx.URL(signed_callback_url("https://h/x", MJ_SECRET, "midjourney", other_job)).params)
    before = await snapshot(db)

    assert (await receiver.handle("midjourney", {}, body, query={}))[0] == 401
    assert (await receiver.handle("midjourney", {}, body, query=wrong))[0] == 401
    assert (await receiver.handle("midjourney", {}, body, query=expired))[0] == 401
    assert (await receiver.handle("midjourney", {}, body, query=elsewhere))[0] == 404  # a token for another job
    assert await snapshot(db) == before

    assert (await receiver.handle("midjourney", {}, body, query=good))[0] == 200
    assert await receiver.handle("midjourney", {}, body, query=good) == (200, {"status": "duplicate"})
    [event] = await webhook_events(db, job_id)
    assert event["delivery_id"] == "midjourney:1712205591372829:IN_PROGRESS:45%"
    assert event["payload"]["progress"] == 0.45 and event["payload"]["output"] == []


async def test_the_http_endpoint_answers_each_delivery_once_its_event_is_queued_and_refuses_forged_and_oversized_ones(
    db: asyncpg.Connection, receiver: WebhookReceiver
) -> None:
    job_id = await job_with(db, "replicate", PREDICTION)
    async with WebhookServer(receiver) as server, httpx.AsyncClient() as http:
        url = f"{server.base_url}/replicate"
        answers = []
        for i in range(10):
            body = prediction(status="succeeded" if i else "processing")
            headers = signed(body)
            resp = await http.post(url, content=body, headers=headers)
            assert resp.status_code == 200, resp.text
            answer = resp.json()
            # Answered only once the delivery is a committed event (another connection sees it).
            event = await db.fetchrow(
                "select job_id, kind, delivery_id from imagen.job_events where id = $1", answer["event_id"]
            )
            assert event is not None and tuple(event) == (job_id, "webhook", f"replicate:{headers['webhook-id']}")
            answers.append(answer)
        forged = await http.post(
            url, content=prediction(), headers=signed(prediction(), secret=REPLICATE_SECRET[:-4] + "AAA=")
        )
        too_big = await http.post(url, content=b"x" * (1024 * 1024 + 1))

    assert [a["status"] for a in answers] == ["accepted"] * 10
    assert forged.status_code == 401 and too_big.status_code == 413
    assert forged.json()["error"]["code"] == "unauthorized"
    assert too_big.json()["error"]["code"] == "payload_too_large"
    assert len(await webhook_events(db, job_id)) == 10  # the forged and the oversized one added nothing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_imagen_worker_with_webhook_port_serves_the_receiver_beside_the_worker(
    db: asyncpg.Connection, cli_env: dict[str, str]
) -> None:
    job_id = await job_with(db, "replicate", PREDICTION)
    await db.execute("update imagen.jobs set status = 'cancelled' where id = $1", job_id)  # keep the worker idle
    port = _free_port()
    env = {**cli_env, "IMAGEN_WEBHOOK_SECRET": REPLICATE_SECRET}
    env.pop("REPLICATE_WEBHOOK_SECRET", None)
    worker = subprocess.Popen(
        [*IMAGEN, "worker", "--webhook-port", str(port), "--poll-interval", "0.5"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/imagen/webhooks/replicate"
        body = prediction()
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    unsigned = await http.post(url, content=body)
                    break
                except httpx.ConnectError:
                    assert worker.poll() is None and time.monotonic() < deadline, "the webhook server did not start"
                    await asyncio.sleep(0.1)
            accepted = await http.post(url, content=body, headers=signed(body))
    finally:
        worker.send_signal(signal.SIGTERM)
        _, log = await asyncio.to_thread(worker.communicate, timeout=30)

    assert unsigned.status_code == 401
    assert accepted.status_code == 200, accepted.text
    assert worker.returncode == 0, log
    assert f"webhooks listening on http://127.0.0.1:{port}/imagen/webhooks" in log
    assert len(await webhook_events(db, job_id)) == 1
