"""Usage and cost: the price of one image per provider/model, and the usage report behind `imagen jobs --stats`.

The built-in table holds approximate public list prices in USD per image, as published by each
provider (OpenAI, Google, Stability AI, Replicate) when this table was written. They change, they
differ by account, region and contract, and some providers bill by tokens or by subscription, so
treat them as estimates. Set IMAGEN_PRICES_FILE to a JSON file to correct or extend them:

    {"openai/gpt-image-1": {"high:*": 0.19},
     "replicate/black-forest-labs/flux-dev": 0.03,
     "midjourney/*": 0.08}

A key is `provider/model` (the model may itself contain `/`; `provider/*` covers every model of a
provider). A value is a price, or an object of `quality:size` cells where either part may be `*`.
The file wins: its entry for the model, then its `provider/*`, then the built-in ones; an entry
whose cells do not cover a quality and size passes the lookup on to the next.
The pipeline records a price in `imagen.jobs.cost_usd` only when the provider's result carries no
cost of its own. docs/configuration-pricing.md is this module's user-facing twin.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .errors import ConfigError
from .queries import queries

PRICES_ENV = "IMAGEN_PRICES_FILE"

Cells = dict[str, Decimal]
Entry = Decimal | Cells


# Approximate list prices, USD per image. Sources: openai.com/api/pricing (gpt-image-1, dall-e),
# ai.google.dev/gemini-api/docs/pricing (Imagen, Gemini image output at ~1290 tokens per image),
# platform.stability.ai/pricing (credits at $0.01), replicate.com model pages; Midjourney has no
# official API: its price is a subscription's fast-GPU cost per job, as Midjourney-style APIs resell it.
BUILT_IN: dict[str, Entry] = {
    "openai/gpt-image-1": {
        "low:1024x1024": Decimal("0.011"),
        "low:1024x1536": Decimal("0.016"),
        "low:1536x1024": Decimal("0.016"),
        "low:*": Decimal("0.011"),
        "medium:1024x1024": Decimal("0.042"),
        "medium:1024x1536": Decimal("0.063"),
        "medium:1536x1024": Decimal("0.063"),
        "medium:*": Decimal("0.042"),
        "high:1024x1024": Decimal("0.167"),
        "high:1024x1536": Decimal("0.25"),
        "high:1536x1024": Decimal("0.25"),
        "high:*": Decimal("0.167"),
        # Quality unset or `auto`: the model picks; estimated at medium.
        "*:1024x1024": Decimal("0.042"),
        "*:1024x1536": Decimal("0.063"),
        "*:1536x1024": Decimal("0.063"),
        "*:*": Decimal("0.042"),
    },
    "openai/dall-e-3": {
        "standard:1024x1024": Decimal("0.04"),
        "standard:1024x1792": Decimal("0.08"),
        "standard:1792x1024": Decimal("0.08"),
        "hd:1024x1024": Decimal("0.08"),
        "hd:1024x1792": Decimal("0.12"),
        "hd:1792x1024": Decimal("0.12"),
        "hd:*": Decimal("0.08"),
        # Quality unset: the API's default is standard.
        "*:1024x1792": Decimal("0.08"),
        "*:1792x1024": Decimal("0.08"),
        "*:*": Decimal("0.04"),
    },
    "google/imagen-3.0-generate-001": Decimal("0.04"),
    "google/imagen-3.0-generate-002": Decimal("0.03"),
    "google/imagen-3.0-fast-generate-001": Decimal("0.02"),
    "google/imagen-4.0-generate-001": Decimal("0.04"),
    "google/imagen-4.0-ultra-generate-001": Decimal("0.06"),
    "google/imagen-4.0-fast-generate-001": Decimal("0.02"),
    "google/gemini-2.5-flash-image": Decimal("0.039"),
    "stability/core": Decimal("0.03"),
    "stability/ultra": Decimal("0.08"),
    "stability/sd3.5-large": Decimal("0.065"),
    "stability/sd3.5-large-turbo": Decimal("0.04"),
    "stability/sd3.5-medium": Decimal("0.035"),
    "stability/upscale-creative": Decimal("0.25"),
    "replicate/black-forest-labs/flux-schnell": Decimal("0.003"),
    "replicate/black-forest-labs/flux-dev": Decimal("0.025"),
    "replicate/black-forest-labs/flux-1.1-pro": Decimal("0.04"),
    "midjourney/*": Decimal("0.05"),
    "local/*": Decimal("0"),
}


@dataclass(frozen=True)
class PriceTable:
    """Prices by `provider/model`: the overrides, then the built-in table; in each, the model's own
    entry, then its provider's `provider/*`. The first entry that prices the quality and size wins."""

    built_in: Mapping[str, Entry]
    overrides: Mapping[str, Entry] = field(default_factory=dict)

    def price(
        self, provider: str, model: str, *, quality: str | None = None, size: str | None = None
    ) -> Decimal | None:
        """USD for one image, or None when no entry prices this provider, model, quality and size."""
        for layer in (self.overrides, self.built_in):
            for key in (f"{provider}/{model}", f"{provider}/*"):
                entry = layer.get(key)
                price = entry if entry is None or isinstance(entry, Decimal) else _cell(entry, quality, size)
                if price is not None:
                    return price
        return None


def _cell(cells: Cells, quality: str | None, size: str | None) -> Decimal | None:
    q = quality or "*"
    s = size or "*"
    for key in (f"{q}:{s}", f"{q}:*", f"*:{s}", "*:*"):
        if key in cells:
            return cells[key]
    return None


def _price_value(raw: Any, where: str) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ConfigError(f"{where}: {raw!r} is not a price; write a number of US dollars per image such as 0.04")
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise ConfigError(
            f"{where}: {raw!r} is not a price; write a number of US dollars per image such as 0.04"
        ) from None
    if not value.is_finite() or value < 0:
        raise ConfigError(f"{where}: {raw!r} is not a price; it must be a finite number of dollars, zero or more")
    if value >= Decimal("1000000"):
        raise ConfigError(f"{where}: {raw!r} is over a million dollars per image; write the price in dollars")
    return value


def parse_overrides(data: Any, source: str) -> dict[str, Entry]:
    """Validate the JSON of a prices file; every error names `source`, the entry and the fix."""
    if not isinstance(data, dict):
        raise ConfigError(
            f'{source}: the file must hold a JSON object such as {{"openai/gpt-image-1": 0.04}}, '
            f"not a {type(data).__name__}"
        )
    out: dict[str, Entry] = {}
    for key, value in data.items():
        provider, sep, model = key.partition("/")
        if not sep or not provider or not model:
            raise ConfigError(
                f"{source}: key {key!r} must be 'provider/model' (for example 'openai/gpt-image-1' or 'midjourney/*')"
            )
        where = f"{source}: {key!r}"
        if isinstance(value, dict):
            if not value:
                raise ConfigError(f"{where}: an empty object prices nothing; give a price or 'quality:size' cells")
            cells: Cells = {}
            for cell, price in value.items():
                quality, colon, size = cell.partition(":")
                if not colon or not quality or not size:
                    raise ConfigError(
                        f"{where}: cell {cell!r} must be 'quality:size', either part may be '*' "
                        "(for example 'high:1024x1024', 'hd:*' or '*:*')"
                    )
                cells[cell] = _price_value(price, f"{where} cell {cell!r}")
            out[key] = cells
        else:
            out[key] = _price_value(value, where)
    return out


def load_prices_file(path: Path) -> dict[str, Entry]:
    """The overrides in a prices file, validated (ConfigError with the file, line or entry on any problem)."""
    source = f"{PRICES_ENV}={path}"
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file; create it or unset {PRICES_ENV}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the file ({exc})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return parse_overrides(data, source)


def _reject_constant(name: str) -> float:
    # NaN and Infinity are not JSON, and not prices.
    raise json.JSONDecodeError(f"{name} is not a number", name, 0)


_cache: tuple[tuple[str, int, int], PriceTable] | None = None


def price_table(environ: Mapping[str, str] | None = None) -> PriceTable:
    """The built-in table with IMAGEN_PRICES_FILE's overrides; re-read when the file changes."""
    global _cache
    env = os.environ if environ is None else environ
    raw = env.get(PRICES_ENV, "")
    if not raw:
        return PriceTable(BUILT_IN)
    path = Path(raw).expanduser()
    try:
        st = path.stat()
        stamp = (str(path), st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = (str(path), -1, -1)
    if _cache is not None and _cache[0] == stamp:
        return _cache[1]
    table = PriceTable(BUILT_IN, load_prices_file(path))
    _cache = (stamp, table)
    return table


def list_price(provider: str, model: str, *, quality: str | None = None, size: str | None = None) -> Decimal | None:
    """The configured price of one image of `provider/model` at `quality` and `size` (None: unknown)."""
    return price_table().price(provider, model, quality=quality, size=size)


# -- the usage report --------------------------------------------------------------------------

STATUSES = ("pending", "running", "done", "failed", "cancelled")


def _seconds(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 3)


def _usd(value: Decimal | None) -> float:
    return float(value) if value is not None else 0.0


async def usage_report(
    conn: asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy,
    *,
    since: datetime | None = None,
    owner_user_id: UUID | None = None,
) -> dict[str, Any]:
    """Counts by status, run and queue-wait percentiles and cost by provider/model, for jobs created
    at or after `since` (all jobs when None), optionally of one owner."""
    sql = queries("stats.sql")
    counts = {s: 0 for s in STATUSES}
    for r in await conn.fetch(sql["status_counts"], since, owner_user_id):
        counts[r["status"]] = int(r["jobs"])
    d = await conn.fetchrow(sql["durations"], since, owner_user_id)
    assert d is not None
    rows = await conn.fetch(sql["by_model"], since, owner_user_id)
    by_model = [
        {
            "provider": r["provider"],
            "model": r["model"],
            "jobs": int(r["jobs"]),
            "done": int(r["done"]),
            "failed": int(r["failed"]),
            "run_p50_s": _seconds(r["run_p50"]),
            "run_p95_s": _seconds(r["run_p95"]),
            "cost_usd": _usd(r["cost_usd"]),
            "unpriced_done": int(r["unpriced_done"]),
        }
        for r in rows
    ]
    total = sum((r["cost_usd"] for r in rows if r["cost_usd"] is not None), Decimal(0))
    return {
        "since": since.isoformat() if since else None,
        "jobs": sum(counts.values()),
        "counts": counts,
        "run_seconds": {"p50": _seconds(d["run_p50"]), "p95": _seconds(d["run_p95"]), "n": int(d["run_n"])},
        "queue_wait_seconds": {
            "p50": _seconds(d["wait_p50"]),
            "p95": _seconds(d["wait_p95"]),
            "n": int(d["wait_n"]),
        },
        "cost_usd": float(total),
        "by_model": by_model,
    }
