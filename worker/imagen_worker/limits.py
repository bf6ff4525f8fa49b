"""Per-provider concurrency and rate limits that hold across every worker sharing the database.

The state lives in Postgres (migration 0005): `imagen.provider_limits` holds each provider's
`max_concurrent`, `requests_per_minute` and `burst` and its token bucket; `imagen.provider_slots`
holds the calls in flight, each tied to its job's running lease, so a killed worker's slots die with
its leases. `ProviderLimiter` wraps a provider call: acquire (one round trip) → call → release.
Providers without limits cost a dictionary lookup in a cache refreshed every few seconds.
Why this design: docs/adr/0002-provider-limits.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import re
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from .errors import ConfigError
from .queries import queries
from .queue import CONNECTION_ERRORS

if TYPE_CHECKING:
    from .queue import JobContext, Worker

log = logging.getLogger("imagen.limits")

LIMITS_ENV = "IMAGEN_PROVIDER_LIMITS"
# How stale the cached limits may get: a `imagen limits set` reaches every worker within this.
REFRESH_SECONDS = 5.0
# The longest single sleep while waiting, so a changed or removed limit is seen promptly.
MAX_SLEEP_SECONDS = 2.0
# While a provider is at max_concurrent, retries back off from the first to the second figure.
BUSY_BACKOFF_SECONDS = (0.05, 1.0)

# The same rule as the provider column of imagen.jobs and imagen.provider_limits.
_PROVIDER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")


def _q(name: str) -> str:
    return queries("limits.sql")[name]


@dataclass(frozen=True)
class ProviderLimit:
    """One provider's limits; None means no limit of that kind."""

    provider: str
    max_concurrent: int | None = None
    requests_per_minute: float | None = None
    burst: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "max_concurrent": self.max_concurrent,
            "requests_per_minute": self.requests_per_minute,
            "burst": self.burst,
        }

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> ProviderLimit:
        rpm = r["requests_per_minute"]
        return cls(
            provider=r["provider"],
            max_concurrent=r["max_concurrent"],
            requests_per_minute=float(rpm) if rpm is not None else None,
            burst=int(r["burst"]),
        )


def check_provider_name(provider: str) -> str:
    if not _PROVIDER_NAME.fullmatch(provider):
        raise ConfigError(
            f"provider {provider!r} is not a provider name: lower-case letters, digits, '_' and '-', "
            "starting with a letter (for example 'openai')"
        )
    return provider


def _whole(value: Any, where: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} must be a whole number of at least {minimum} (or null for no limit), not {value!r}")
    return value


def parse_limits(data: Any, source: str = LIMITS_ENV) -> dict[str, ProviderLimit]:
    """Validate `{"provider": {"max_concurrent": N, "requests_per_minute": N, "burst": N}}` ("rpm" also
    names requests_per_minute); every error names `source`, the provider and the fix."""
    if not isinstance(data, dict):
        raise ConfigError(
            f'{source} must be a JSON object such as {{"openai": {{"max_concurrent": 4, "requests_per_minute": 50}}}}'
        )
    out: dict[str, ProviderLimit] = {}
    for provider, spec in data.items():
        check_provider_name(provider)
        where = f"{source}: {provider!r}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be an object with max_concurrent, requests_per_minute and/or burst")
        unknown = set(spec) - {"max_concurrent", "requests_per_minute", "rpm", "burst"}
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))}; use max_concurrent, requests_per_minute, burst"
            )
        if "rpm" in spec and "requests_per_minute" in spec:
            raise ConfigError(f"{where}: give requests_per_minute or rpm, not both")
        rpm = spec.get("requests_per_minute", spec.get("rpm"))
        if rpm is not None and (
            isinstance(rpm, bool) or not isinstance(rpm, int | float) or not math.isfinite(rpm) or not 0 < rpm <= 1e6
        ):
            raise ConfigError(f"{where}: requests_per_minute must be a number above 0 (or null), not {rpm!r}")
        max_concurrent = _whole(spec.get("max_concurrent"), f"{where}: max_concurrent", 1)
        burst = _whole(spec.get("burst", 1), f"{where}: burst", 1)
        out[provider] = ProviderLimit(
            provider, max_concurrent, float(rpm) if rpm is not None else None, burst if burst is not None else 1
        )
    return out


def limits_from_env(environ: Mapping[str, str] | None = None) -> dict[str, ProviderLimit]:
    """IMAGEN_PROVIDER_LIMITS, parsed ({} when unset); ConfigError when malformed."""
    raw = (os.environ if environ is None else environ).get(LIMITS_ENV, "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{LIMITS_ENV} is not valid JSON: {exc.msg} at column {exc.colno}") from None
    return parse_limits(data)


# -- configuration (the `imagen limits` commands) -----------------------------------------------


async def set_limit(
    conn: asyncpg.Connection | asyncpg.Pool,
    provider: str,
    *,
    max_concurrent: int | None = None,
    requests_per_minute: float | None = None,
    burst: int | None = None,
    clear_max_concurrent: bool = False,
    clear_requests_per_minute: bool = False,
) -> ProviderLimit:
    """Create or change a provider's limits; arguments left None keep the stored value."""
    check_provider_name(provider)
    row = await conn.fetchrow(
        _q("set_limit"),
        provider,
        max_concurrent,
        requests_per_minute,
        burst,
        clear_max_concurrent,
        clear_requests_per_minute,
    )
    assert row is not None
    return ProviderLimit.from_record(row)


async def delete_limit(conn: asyncpg.Connection | asyncpg.Pool, provider: str) -> bool:
    """Remove a provider's limits (and its slots); False when it had none."""
    return await conn.fetchval(_q("delete_limit"), provider) is not None


async def list_limits(conn: asyncpg.Connection | asyncpg.Pool) -> list[dict[str, Any]]:
    """Every provider's limits, with the slots in use and the tokens available now."""
    out: list[dict[str, Any]] = []
    for r in await conn.fetch(_q("list_limits")):
        row = ProviderLimit.from_record(r).as_dict()
        tokens = r["tokens"]
        updated: datetime = r["updated_at"]
        row.update(
            in_use=int(r["in_use"]),
            tokens=round(float(tokens), 3) if tokens is not None else None,
            updated_at=updated.isoformat(),
        )
        out.append(row)
    return out


# -- the limiter ---------------------------------------------------------------------------------


class ProviderLimiter:
    """Acquire → call → release around provider calls, against the limits shared in the database."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        env_limits: Mapping[str, ProviderLimit] | None = None,
        refresh_seconds: float = REFRESH_SECONDS,
        max_sleep: float = MAX_SLEEP_SECONDS,
    ) -> None:
        self.pool = pool
        self.refresh_seconds = refresh_seconds
        self.max_sleep = max_sleep
        self._env_limits = dict(env_limits or {})
        self._limits: dict[str, ProviderLimit] = {}
        self._loaded_at: float | None = None
        self._refresh_lock = asyncio.Lock()
        # One waiter per provider in this process asks the database; the others queue behind it.
        self._gates: dict[str, asyncio.Lock] = {}
        self._freed: dict[str, asyncio.Event] = {}
        self.stats = {"refreshes": 0, "acquires": 0, "waits": 0}

    async def limit(self, provider: str) -> ProviderLimit | None:
        """The provider's limits from the cache (refreshed when older than refresh_seconds); None: unlimited."""
        if self._loaded_at is None or time.monotonic() - self._loaded_at >= self.refresh_seconds:
            await self._refresh()
        return self._limits.get(provider)

    async def _refresh(self) -> None:
        async with self._refresh_lock:
            if self._loaded_at is not None and time.monotonic() - self._loaded_at < self.refresh_seconds:
                return
            try:
                if self._env_limits:
                    await self._apply_env_limits()
                rows = await self.pool.fetch(_q("load_limits"))
            except CONNECTION_ERRORS as exc:
                if self._loaded_at is None:
                    raise
                log.warning("could not refresh provider limits (%s); keeping the cached ones", type(exc).__name__)
                self._loaded_at = time.monotonic()
                return
            self.stats["refreshes"] += 1
            self._limits = {r["provider"]: ProviderLimit.from_record(r) for r in rows}
            self._loaded_at = time.monotonic()

    async def _apply_env_limits(self) -> None:
        # IMAGEN_PROVIDER_LIMITS is declarative: each named provider gets exactly these limits, once per process.
        for limit in self._env_limits.values():
            await set_limit(
                self.pool,
                limit.provider,
                max_concurrent=limit.max_concurrent,
                requests_per_minute=limit.requests_per_minute,
                burst=limit.burst,
                clear_max_concurrent=limit.max_concurrent is None,
                clear_requests_per_minute=limit.requests_per_minute is None,
            )
            log.info("provider limits from %s: %s", LIMITS_ENV, json.dumps(limit.as_dict()))
        self._env_limits = {}

    @asynccontextmanager
    async def slot(
        self, provider: str, job_id: uuid.UUID, holder: str, *, reserved: bool = False
    ) -> AsyncIterator[None]:
        """Hold one of `provider`'s call slots (and spend a token) for the block. `holder` is the job's
        `locked_by`: the slot lives only while that worker holds the job's lease. `reserved`: the claim
        already took them (imagen.claim_within_limits, ADR 0007); the block only releases the slot."""
        if reserved:
            try:
                yield
            finally:
                await asyncio.shield(self._release(provider, job_id, holder))
            return
        if await self.limit(provider) is None:
            yield
            return
        holds_slot = await self._acquire(provider, job_id, holder)
        try:
            yield
        finally:
            if holds_slot:
                await asyncio.shield(self._release(provider, job_id, holder))

    async def _acquire(self, provider: str, job_id: uuid.UUID, holder: str) -> bool:
        gate = self._gates.setdefault(provider, asyncio.Lock())
        freed = self._freed.setdefault(provider, asyncio.Event())
        backoff = BUSY_BACKOFF_SECONDS[0]
        async with gate:
            while True:
                freed.clear()
                self.stats["acquires"] += 1
                row = await self.pool.fetchrow(_q("acquire_slot"), provider, job_id, holder)
                assert row is not None
                if row["granted"]:
                    return bool(row["holds_slot"])
                self.stats["waits"] += 1
                if row["wait_seconds"] is None:
                    # At max_concurrent: a release in this process wakes us at once; others' releases are
                    # seen at the next try, backing off so waiting workers do not hammer the database.
                    delay = min(self.max_sleep, backoff * random.uniform(0.8, 1.2))
                    backoff = min(BUSY_BACKOFF_SECONDS[1], backoff * 2)
                    try:
                        await asyncio.wait_for(freed.wait(), delay)
                        backoff = BUSY_BACKOFF_SECONDS[0]
                    except TimeoutError:
                        pass
                else:
                    # Out of tokens: sleep until the next one is due.
                    await asyncio.sleep(min(self.max_sleep, float(row["wait_seconds"]) + 0.002))
                if await self.limit(provider) is None:
                    return False

    async def _release(self, provider: str, job_id: uuid.UUID, holder: str) -> None:
        try:
            await self.pool.execute(_q("release_slot"), provider, job_id, holder)
        except CONNECTION_ERRORS as exc:
            log.warning(
                "job=%s could not release its %s slot (%s); it frees when the job's lease ends",
                job_id,
                provider,
                type(exc).__name__,
            )
        finally:
            freed = self._freed.get(provider)
            if freed is not None:
                freed.set()


_limiters: weakref.WeakKeyDictionary[Worker, ProviderLimiter] = weakref.WeakKeyDictionary()


def provider_limiter(worker: Worker) -> ProviderLimiter:
    """The worker's limiter (one per worker and pool, made on first use with IMAGEN_PROVIDER_LIMITS)."""
    limiter = _limiters.get(worker)
    if limiter is None or limiter.pool is not worker.pool:
        limiter = ProviderLimiter(worker.pool, env_limits=limits_from_env())
        _limiters[worker] = limiter
    return limiter


def provider_slot(ctx: JobContext, provider: str | None = None) -> AbstractAsyncContextManager[None]:
    """The slot the job in `ctx` holds while it calls its provider; a no-op for unlimited providers."""
    worker = ctx.worker
    return provider_limiter(worker).slot(
        provider or ctx.job.provider, ctx.job.id, worker.config.worker_id, reserved=ctx.job.slot_reserved
    )
