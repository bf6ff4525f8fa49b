"""Usage and cost: the pipeline records each job's cost from the price table by provider, model,
quality and size when the provider reports none; IMAGEN_PRICES_FILE overrides it and a malformed
file fails loudly; `imagen jobs --stats --json` reports counts, percentiles and cost."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import asyncpg
import pytest

from imagen_worker.errors import ConfigError
from imagen_worker.jobs import submit_job
from imagen_worker.pricing import BUILT_IN, PriceTable, load_prices_file
from imagen_worker.providers import Capabilities, GeneratedImage, GenerationRequest, Provider, ProviderResult
from imagen_worker.providers.local import draw
from imagen_worker.queue import WorkerConfig
from imagen_worker.spec import parse_spec

from ..conftest import IMAGEN
from ..helpers import local_pipeline, running_worker, wait_for_status

if TYPE_CHECKING:
    from imagen_worker.queue import JobContext

pytestmark = pytest.mark.asyncio

OWNER = uuid.UUID("00000000-0000-4000-8000-0000000000c0")
GPT_SIZES = ("1024x1024", "1024x1536", "1536x1024")
DALLE_SIZES = ("1024x1024", "1024x1792", "1792x1024")


class FakeRemote(Provider):
    """Answers like a remote provider with no cost in its result (unless the model is `self-priced`)
    and a tiny picture, so the test pays for no network and no large images."""

    calls = 0

    async def generate(self, request: GenerationRequest, ctx: JobContext) -> ProviderResult:
        FakeRemote.calls += 1
        cost = Decimal("0.5") if request.model == "self-priced" else None
        return ProviderResult(GeneratedImage(draw(request.prompt, 1, 16, 16)), cost_usd=cost)


class FakeOpenAI(FakeRemote):
    name = "openai"
    models: ClassVar[dict[str, Capabilities]] = {
        "gpt-image-1": Capabilities(
            sizes=GPT_SIZES, qualities=("low", "medium", "high", "auto"), default_size="1024x1024"
        ),
        "dall-e-3": Capabilities(sizes=DALLE_SIZES, qualities=("standard", "hd"), default_size="1024x1024"),
        "self-priced": Capabilities(default_size="1024x1024"),
        "declared": Capabilities(default_size="1024x1024", price_usd=Decimal("0.07")),
        "brand-new": Capabilities(default_size="1024x1024"),
    }


class FakeGoogle(FakeRemote):
    name = "google"
    models: ClassVar[dict[str, Capabilities]] = {
        "imagen-4.0-generate-001": Capabilities(aspect_ratios=("1:1", "16:9")),
        "gemini-2.5-flash-image": Capabilities(aspect_ratios=("1:1",)),
    }


# (provider, model, spec fields, expected cost_usd)
CASES: list[tuple[str, str, dict[str, Any], Decimal | None]] = [
    ("openai", "gpt-image-1", {"quality": "high", "size": "1536x1024"}, Decimal("0.25")),
    ("openai", "gpt-image-1", {"quality": "low"}, Decimal("0.011")),  # default size 1024x1024
    ("openai", "gpt-image-1", {"size": "1024x1536"}, Decimal("0.063")),  # quality unset: priced as medium
    ("openai", "dall-e-3", {"quality": "hd", "size": "1792x1024"}, Decimal("0.12")),
    ("openai", "dall-e-3", {"quality": "standard"}, Decimal("0.04")),
    ("google", "imagen-4.0-generate-001", {"aspect_ratio": "16:9"}, Decimal("0.04")),
    ("google", "gemini-2.5-flash-image", {}, Decimal("0.039")),
    ("local", "local-v1", {}, Decimal("0")),
    ("openai", "self-priced", {}, Decimal("0.5")),  # the provider's own figure wins
    ("openai", "declared", {}, Decimal("0.07")),  # not in the table: the provider's declared price
    ("openai", "brand-new", {}, None),  # priced nowhere: left unknown, never guessed
]


async def run_cases(db: asyncpg.Connection, db_url: str, store: Path) -> dict[tuple[str, str, str], Any]:
    pipeline = local_pipeline(store, {"openai": FakeOpenAI, "google": FakeGoogle})
    ids: dict[uuid.UUID, tuple[str, str, str]] = {}
    async with running_worker(db_url, pipeline, WorkerConfig(concurrency=8, poll_interval=0.5)):
        for provider, model, fields, _ in CASES:
            spec = parse_spec({"prompt": f"{provider} {model}", **fields})
            job_id = await submit_job(db, spec, owner_user_id=OWNER, provider=provider, model=model)
            ids[job_id] = (provider, model, json.dumps(fields, sort_keys=True))
        await wait_for_status(db, list(ids), timeout=30)
    rows = await db.fetch("select id, status, error, cost_usd from imagen.jobs where id = any($1::uuid[])", list(ids))
    return {ids[r["id"]]: (r["status"], r["error"], r["cost_usd"]) for r in rows}


async def test_pipeline_records_cost_by_provider_model_quality_and_size(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGEN_PRICES_FILE", raising=False)
    got = await run_cases(db, db_url, tmp_path)
    for provider, model, fields, expected in CASES:
        status, error, cost = got[(provider, model, json.dumps(fields, sort_keys=True))]
        assert status == "done", error
        assert cost == expected, f"{provider}/{model} {fields}: cost {cost}, expected {expected}"


async def test_prices_file_overrides_the_built_in_table(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps(
            {
                "openai/gpt-image-1": {"high:1536x1024": 0.3},  # one cell; the others stay built-in
                "openai/brand-new": "0.123",
                "google/*": 0.01,  # a provider-wide override beats the built-in model entries
                "local/local-v1": 1,  # but never a cost the provider reported itself
            }
        )
    )
    monkeypatch.setenv("IMAGEN_PRICES_FILE", str(prices))
    got = await run_cases(db, db_url, tmp_path / "store")
    costs = {(p, m, f): c for (p, m, f), (_, _, c) in got.items()}

    def cost(provider: str, model: str, **fields: Any) -> Decimal | None:
        value = costs[(provider, model, json.dumps(fields, sort_keys=True))]
        assert value is None or isinstance(value, Decimal)
        return value

    assert cost("openai", "gpt-image-1", quality="high", size="1536x1024") == Decimal("0.3")
    assert cost("openai", "gpt-image-1", quality="low") == Decimal("0.011")
    assert cost("openai", "brand-new") == Decimal("0.123")
    assert cost("google", "imagen-4.0-generate-001", aspect_ratio="16:9") == Decimal("0.01")
    assert cost("google", "gemini-2.5-flash-image") == Decimal("0.01")
    assert cost("local", "local-v1") == Decimal("0")
    assert cost("openai", "dall-e-3", quality="hd", size="1792x1024") == Decimal("0.12")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"openai/gpt-image-1": 0.04,}',
            "not valid JSON: Expecting property name enclosed in double quotes at line 1",
        ),
        ("[0.04]", "must hold a JSON object"),
        ('{"gpt-image-1": 0.04}', "key 'gpt-image-1' must be 'provider/model'"),
        ('{"openai/gpt-image-1": -1}', "'openai/gpt-image-1': -1 is not a price"),
        ('{"openai/gpt-image-1": true}', "True is not a price"),
        ('{"openai/gpt-image-1": "cheap"}', "'cheap' is not a price"),
        ('{"openai/gpt-image-1": NaN}', "not valid JSON: NaN is not a number"),
        ('{"openai/gpt-image-1": {"high": 0.2}}', "cell 'high' must be 'quality:size'"),
        ('{"openai/gpt-image-1": {"high:*": [1]}}', "cell 'high:*': [1] is not a price"),
        ('{"openai/gpt-image-1": {}}', "an empty object prices nothing"),
    ],
)
async def test_malformed_prices_file_raises_an_error_naming_file_entry_and_fix(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_prices_file(path)
    assert f"IMAGEN_PRICES_FILE={path}" in str(err.value)
    assert message in str(err.value)


async def test_malformed_prices_file_fails_the_job_before_the_provider_is_called(
    db: asyncpg.Connection, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-such-prices.json"
    monkeypatch.setenv("IMAGEN_PRICES_FILE", str(missing))
    FakeRemote.calls = 0
    pipeline = local_pipeline(tmp_path, {"openai": FakeOpenAI})
    async with running_worker(db_url, pipeline, WorkerConfig(concurrency=2, poll_interval=0.5)):
        job_id = await submit_job(
            db, parse_spec({"prompt": "a fox"}), owner_user_id=OWNER, provider="openai", model="gpt-image-1"
        )
        await wait_for_status(db, [job_id], timeout=30)
    row = await db.fetchrow("select status, error from imagen.jobs where id = $1", job_id)
    assert row is not None
    assert row["status"] == "failed"
    assert f"IMAGEN_PRICES_FILE={missing}: no such file" in row["error"]
    assert FakeRemote.calls == 0, "the provider was paid for a job that could not be priced"


async def test_every_built_in_price_is_a_sane_dollar_amount() -> None:
    table = PriceTable(BUILT_IN)
    assert table.price("openai", "gpt-image-1", quality="medium", size="1024x1024") == Decimal("0.042")
    assert table.price("replicate", "black-forest-labs/flux-schnell") == Decimal("0.003")
    assert table.price("midjourney", "v7") == Decimal("0.05")
    assert table.price("stability", "ultra") == Decimal("0.08")
    assert table.price("local", "anything") == Decimal("0")
    for key, entry in BUILT_IN.items():
        for price in entry.values() if isinstance(entry, dict) else [entry]:
            assert Decimal(0) <= price < Decimal(1), key


async def seed(conn: asyncpg.Connection, now: datetime) -> None:
    """Jobs with known timestamps: created `age` ago, waited `wait`, ran `run` seconds."""

    async def job(
        provider: str,
        model: str,
        status: str,
        age: float,
        wait: float | None = None,
        run: float | None = None,
        cost: str | None = None,
    ) -> None:
        created = now - timedelta(seconds=age)
        started = created + timedelta(seconds=wait) if wait is not None else None
        completed = started + timedelta(seconds=run) if started is not None and run is not None else None
        running = status == "running"
        await conn.execute(
            """insert into imagen.jobs (owner_user_id, provider, model, prompt, status, created_at, started_at,
                                        completed_at, cost_usd, locked_by, lease_expires_at, attempts)
               values ($1, $2, $3, 'seeded', $4, $5, $6, $7, $8::numeric, $9, $10, 1)""",
            OWNER,
            provider,
            model,
            status,
            created,
            started,
            completed,
            cost,
            "w1" if running else None,
            now + timedelta(seconds=30) if running else None,
        )

    # Inside the last hour: 5 done (run 1, 2, 3, 4, 10 s; wait 1..5 s), 1 failed, 1 running, 2 pending.
    await job("openai", "gpt-image-1", "done", 600, wait=1, run=1, cost="0.042")
    await job("openai", "gpt-image-1", "done", 600, wait=2, run=2, cost="0.042")
    await job("openai", "gpt-image-1", "done", 600, wait=3, run=3, cost="0.25")
    await job("google", "imagen-4.0-generate-001", "done", 600, wait=4, run=4, cost="0.04")
    await job("local", "local-v1", "done", 600, wait=5, run=10, cost=None)
    await job("google", "imagen-4.0-generate-001", "failed", 600, wait=6, run=None)
    await job("local", "local-v1", "running", 60, wait=7)
    await job("local", "local-v1", "pending", 30)
    await job("local", "local-v1", "pending", 30)
    # Two days ago: outside a --since 1h window.
    await job("openai", "dall-e-3", "done", 2 * 86400, wait=100, run=100, cost="0.12")
    await job("openai", "dall-e-3", "cancelled", 2 * 86400)


def stats(cli_env: dict[str, str], *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [*IMAGEN, "jobs", "--stats", "--json", *args], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert isinstance(report, dict)
    return report


async def test_jobs_stats_json_reports_counts_percentiles_and_cost_by_provider_model(
    db: asyncpg.Connection, cli_env: dict[str, str]
) -> None:
    await seed(db, datetime.now(UTC))
    # The report is an owner's (through the service, under RLS): this login's own owner has no jobs.
    assert stats(cli_env)["jobs"] == 0

    recent = stats(cli_env, "--owner", str(OWNER), "--since", "1h")
    assert recent["jobs"] == 9
    assert recent["counts"] == {"pending": 2, "running": 1, "done": 5, "failed": 1, "cancelled": 0}
    # percentile_cont over run times 1, 2, 3, 4, 10: p50 3, p95 4 + 0.8 * 6.
    assert recent["run_seconds"] == {"p50": 3.0, "p95": 8.8, "n": 5}
    # Queue waits of the 7 started jobs, 1..7 s: p50 4, p95 6 + 0.7 * 1.
    assert recent["queue_wait_seconds"] == {"p50": 4.0, "p95": 6.7, "n": 7}
    assert recent["cost_usd"] == pytest.approx(0.374)
    by_model = {(m["provider"], m["model"]): m for m in recent["by_model"]}
    assert set(by_model) == {("openai", "gpt-image-1"), ("google", "imagen-4.0-generate-001"), ("local", "local-v1")}
    gpt = by_model[("openai", "gpt-image-1")]
    assert (gpt["jobs"], gpt["done"], gpt["failed"], gpt["cost_usd"], gpt["run_p50_s"]) == (3, 3, 0, 0.334, 2.0)
    google = by_model[("google", "imagen-4.0-generate-001")]
    assert (google["jobs"], google["done"], google["failed"], google["cost_usd"]) == (2, 1, 1, 0.04)
    local = by_model[("local", "local-v1")]
    assert (local["jobs"], local["cost_usd"], local["unpriced_done"]) == (4, 0.0, 1)

    everything = stats(cli_env, "--all-owners")
    assert everything["since"] is None
    assert everything["jobs"] == 11
    assert everything["counts"]["cancelled"] == 1
    assert everything["cost_usd"] == pytest.approx(0.494)
    assert everything["run_seconds"]["n"] == 6

    text = subprocess.run(
        [*IMAGEN, "jobs", "--stats", "--all-owners", "--since", "1h"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 0, text.stderr
    assert "p95 8.80 s" in text.stdout
    assert "openai/gpt-image-1" in text.stdout
    assert "total cost: $0.374000" in text.stdout
