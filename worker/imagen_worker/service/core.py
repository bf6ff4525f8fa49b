"""The service: every operation a user can ask for, once, on behalf of one owner, under RLS.

The REST routes and websocket of the server extension, the canvas's kernel transport and the
notebook API all call this (docs/api.md). Each operation takes the owner whose request it is and
runs in a transaction that has set role `authenticated` and that owner's claims, so row-level
security confines it to the owner's rows whatever the statement says.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ..config import _float, _int
from ..errors import (
    ConfigError,
    InvalidField,
    JobNotFound,
    NotFound,
    SpecError,
    TooManyPending,
    VersionConflict,
)
from ..migrate import pending_migrations
from ..providers import ProviderRegistry
from ..providers.base import Capabilities
from ..queries import queries
from ..scheduling import INTERACTIVE
from ..spec import ImagePromptSpec, parse_spec
from ..storage import Storage
from .generate import MAX_VARIANTS, NodeInputs, SourceImage, node_inputs, node_job_bodies
from .models import (
    CanvasSave,
    GenerateGraph,
    ImageVariant,
    JobCreate,
    parse_body,
    query_int,
    query_status,
    query_str,
    query_uuid,
)
from .shapes import canvas_json, event_json, image_json, job_json, worker_json

# A connection of the pool, as `as_owner` hands it out.
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
# The role every query made on behalf of a user runs as (Supabase's signed-in role).
OWNER_ROLE = "authenticated"


def q(name: str) -> str:
    return queries("service.sql")[name]


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of the service; `from_env` reads IMAGEN_DEFAULT_PROVIDER, IMAGEN_MAX_PENDING_JOBS and
    IMAGEN_WORKER_STALE_SECONDS (docs/configuration.md)."""

    default_provider: str = "local"
    max_pending: int = 500
    worker_stale_seconds: float = 30.0
    url_expires_in: int = 3600
    # Whether Image objects carry browser URLs (false on the kernel transport: the bytes travel instead).
    sign_urls: bool = True
    # The Retry-After of a 429 for an owner at the pending cap.
    pending_retry_after: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServiceConfig:
        env = dict(os.environ if environ is None else environ)
        default_provider = (env.get("IMAGEN_DEFAULT_PROVIDER") or "").strip() or "local"
        config = cls(
            default_provider=default_provider,
            max_pending=_int(env, "IMAGEN_MAX_PENDING_JOBS", 500, minimum=1),
            worker_stale_seconds=_float(env, "IMAGEN_WORKER_STALE_SECONDS", 30.0, minimum=1.0),
        )
        return cls(**{**config.__dict__, **overrides})


@asynccontextmanager
async def as_owner(pool: asyncpg.Pool, owner_user_id: uuid.UUID) -> AsyncIterator[Connection]:
    """A connection in a transaction running as role `authenticated` with `owner_user_id`'s claims;
    committed when the block ends, rolled back when it raises. One round trip to set up."""
    claims = json.dumps({"sub": str(uuid.UUID(str(owner_user_id))), "role": OWNER_ROLE})
    async with pool.acquire() as conn:
        # A simple-protocol batch: BEGIN, the role and the claims in one round trip (the claims are a
        # UUID in JSON: nothing to quote).
        await conn.execute(
            f"begin; set local role {OWNER_ROLE}; select set_config('request.jwt.claims', '{claims}', true)"
        )
        try:
            yield conn
        except BaseException:
            if not conn.is_closed():
                with contextlib.suppress(Exception):
                    await conn.execute("rollback")
            raise
        else:
            await conn.execute("commit")


@asynccontextmanager
async def as_login(pool: asyncpg.Pool) -> AsyncIterator[Connection]:
    """A plain transaction on the pool's own login: for a user's own role (ADR 0008), whose RLS is
    keyed on the session's role, so no role or claims are set."""
    async with pool.acquire() as conn, conn.transaction():
        yield conn


async def login_owner(pool: asyncpg.Pool) -> uuid.UUID | None:
    """The owner whose own login role the pool connects as (a JupyterHub user's), else None."""
    value = await pool.fetchval("select imagen.current_owner()")
    return value if isinstance(value, uuid.UUID) else None


@dataclass
class _WorkersSeen:
    at: float
    rows: list[dict[str, Any]] = field(default_factory=list)


class Service:
    """The operations of docs/api.md over one pool (the caller owns and closes the pool)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        storage: Storage,
        *,
        providers: ProviderRegistry | None = None,
        config: ServiceConfig | None = None,
        login_owner: uuid.UUID | None = None,
    ) -> None:
        """`login_owner`: the pool logs in as that owner's own role (`login_owner(pool)`), so operations
        run in plain transactions under its RLS and act for that owner only."""
        self.pool = pool
        self.storage = storage
        self.providers = providers or ProviderRegistry()
        self.config = config or ServiceConfig()
        self.login_owner = login_owner
        self._workers: dict[uuid.UUID, _WorkersSeen] = {}

    def transaction(self, owner: uuid.UUID) -> Any:
        """A connection in a transaction acting for `owner` under row-level security."""
        if self.login_owner is None:
            return as_owner(self.pool, owner)
        if owner != self.login_owner:
            raise NotFound(f"owner {owner} is not the one this server's database login belongs to")
        return as_login(self.pool)

    # -- jobs ----------------------------------------------------------------------------------

    async def create_job(
        self,
        owner: uuid.UUID,
        body: bytes | str | Mapping[str, Any] | None,
        *,
        idempotency_key: str | None = None,
        default_priority: int = INTERACTIVE,
    ) -> dict[str, Any]:
        """Validate and queue one job (docs/api.md, `POST jobs`); an idempotent repeat returns the first."""
        req, provider_name, model, spec = self._validate_job(body)
        _check_idempotency_key(idempotency_key)
        priority = req.priority if req.priority is not None else default_priority
        async with self.transaction(owner) as conn:
            if (
                spec.previous_image_id is not None
                and await conn.fetchval(q("visible_image"), spec.previous_image_id) is None
            ):
                raise InvalidField(
                    f"previous_image_id: no image {spec.previous_image_id} among your images; pass the id of one "
                    "of your generated images",
                    field="previous_image_id",
                )
            canvas_missing = (
                f"canvas_id: no canvas {req.canvas_id} among your canvases; save it first "
                "(PUT canvases/{id}) or leave canvas_id out"
            )
            with _job_insert_errors(canvas_missing):
                row = await conn.fetchrow(
                    q("create_job"),
                    owner,
                    provider_name,
                    model,
                    spec.prompt,
                    spec.stored_spec(),
                    priority,
                    req.max_attempts,
                    req.canvas_id,
                    req.node_id,
                    idempotency_key,
                    req.group_id,
                    self.config.max_pending,
                    self.config.worker_stale_seconds,
                )
            assert row is not None
            job = row["job"]
            if job is None and idempotency_key is not None and row["pending"] < self.config.max_pending:
                # A concurrent request with the same key won the insert: return its job.
                found = await conn.fetchrow(q("jobs_by_keys"), owner, [idempotency_key])
                job = found["job"] if found is not None else None
            if job is None:
                raise TooManyPending(
                    f"you have {row['pending']} pending jobs, the most allowed; wait for some to finish "
                    f"(or cancel them) and retry",
                    retry_after=self.config.pending_retry_after,
                )
            waiting = None
            if row["created"]:
                await self._announce_pending(conn, [uuid.UUID(job["id"])])
            if row["created"] and row["live_workers"] == 0:
                waiting = await self._waiting_reason(conn, owner, provider_name, fresh=True)
                if waiting is not None:
                    await conn.fetchval(q("report_waiting"), uuid.UUID(job["id"]), waiting)
            elif job["status"] == "pending":
                waiting = await self._waiting_reason(conn, owner, job["provider"])
        return job_json(job, waiting_for_worker=waiting)

    async def _announce_pending(self, conn: Connection, job_ids: list[uuid.UUID]) -> None:
        """Write and announce a `pending` state event for each job just queued, in the queuing
        transaction (docs/adr/0006-event-stream.md, amendment), so every view of the owner hears of a
        new job whatever transport queued it. Users' roles may only read job_events: the write goes
        through imagen.announce_pending(), which takes the caller's own jobs only (migration 0012)."""
        await conn.fetchval(q("announce_pending"), job_ids)

    def _validate_job(
        self, body: bytes | str | Mapping[str, Any] | None
    ) -> tuple[JobCreate, str, str, ImagePromptSpec]:
        """A job body checked against the spec and the provider's model: (body, provider, model, spec)."""
        req: JobCreate = parse_body(body, JobCreate)
        provider_name = req.provider or self.config.default_provider
        try:
            provider = self.providers.get(provider_name)
        except SpecError as exc:
            raise InvalidField(str(exc), field="provider") from None
        model = req.model or provider.default_model
        try:
            provider.capabilities(model)
            spec = parse_spec(req.spec_data())
            provider.check(spec, model)
        except SpecError as exc:
            raise _field_error(exc) from None
        return req, provider_name, model, spec

    async def create_jobs(
        self, owner: uuid.UUID, bodies: Sequence[Mapping[str, Any]], *, default_priority: int = INTERACTIVE
    ) -> list[dict[str, Any]]:
        """Queue many jobs in one statement (a sweep): all of them, or none when they would take the
        owner past the pending cap. A bad body is refused naming its index and field."""
        rows = []
        for i, body in enumerate(bodies):
            try:
                row = self._job_row(body, default_priority)
            except InvalidField as exc:
                raise InvalidField(f"[{i}].{exc}", field=f"[{i}].{exc.field}" if exc.field else f"[{i}]") from None
            if row["spec"].get("previous_image_id") is not None:
                raise InvalidField(
                    f"[{i}].previous_image_id: a batch cannot refine; queue refinements one by one",
                    field=f"[{i}].previous_image_id",
                )
            rows.append(row)
        if not rows:
            return []
        async with self.transaction(owner) as conn:
            return await self._insert_jobs(conn, owner, rows)

    def _job_row(
        self, body: Mapping[str, Any], default_priority: int, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """A validated job body as a row of `create_jobs` (a new id)."""
        req, provider_name, model, spec = self._validate_job(body)
        return {
            "id": str(uuid.uuid4()),
            "provider": provider_name,
            "model": model,
            "prompt": spec.prompt,
            "spec": spec.stored_spec(),
            "priority": req.priority if req.priority is not None else default_priority,
            "max_attempts": req.max_attempts,
            "canvas_id": str(req.canvas_id) if req.canvas_id else None,
            "node_id": req.node_id,
            "group_id": str(req.group_id) if req.group_id else None,
            "idempotency_key": idempotency_key,
        }

    async def _insert_jobs(
        self, conn: Connection, owner: uuid.UUID, rows: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Insert validated rows in one statement, in the caller's transaction: all or none (the pending
        cap), each new job announced as pending and, where no live worker can run it, reported waiting.
        A row whose idempotency key is taken (a concurrent repeat) is answered with the job holding it.
        The jobs' JSON, in the order of `rows`."""
        with _job_insert_errors("canvas_id: a job names a canvas that is not among yours; save it first"):
            row = await conn.fetchrow(
                q("create_jobs"), owner, rows, self.config.max_pending, self.config.worker_stale_seconds
            )
        assert row is not None
        if row["capped"]:
            raise TooManyPending(
                f"{len(rows)} more jobs would take you past {self.config.max_pending} pending "
                f"(you have {row['pending']}); wait for some to finish and retry",
                retry_after=self.config.pending_retry_after,
            )
        by_id = {j["id"]: j for j in row["jobs"]}
        created = [by_id[r["id"]] for r in rows if r["id"] in by_id]
        taken = [r["idempotency_key"] for r in rows if r["id"] not in by_id and r.get("idempotency_key")]
        by_key: dict[str, dict[str, Any]] = {}
        if taken:
            by_key = {r["idempotency_key"]: r["job"] for r in await conn.fetch(q("jobs_by_keys"), owner, taken)}
        jobs: list[dict[str, Any]] = [by_id.get(r["id"]) or by_key[r["idempotency_key"]] for r in rows]
        if created:
            await self._announce_pending(conn, [uuid.UUID(j["id"]) for j in created])
        live = set(row["live_providers"])
        waiting: dict[str, str | None] = dict.fromkeys(live)
        for provider in {j["provider"] for j in created if j["provider"] not in live}:
            reason = await self._waiting_reason(conn, owner, provider, fresh=True)
            waiting[provider] = reason
            if reason is not None:
                ids = [uuid.UUID(j["id"]) for j in created if j["provider"] == provider]
                await conn.execute(q("report_waiting_many"), ids, reason)
        return [await self._queued_json(conn, owner, j, waiting) for j in jobs]

    async def _queued_json(
        self, conn: Connection, owner: uuid.UUID, job: dict[str, Any], waiting: dict[str, str | None]
    ) -> dict[str, Any]:
        if job["status"] != "pending":
            return job_json(job)
        if job["provider"] not in waiting:
            waiting[job["provider"]] = await self._waiting_reason(conn, owner, job["provider"])
        return job_json(job, waiting_for_worker=waiting[job["provider"]])

    # -- generating a canvas node ----------------------------------------------------------------

    async def generate_node(
        self,
        owner: uuid.UUID,
        canvas_id: uuid.UUID | str,
        node_id: str,
        graph: bytes | str | Mapping[str, Any] | None,
        *,
        idempotency_key: str | None = None,
        default_priority: int = INTERACTIVE,
    ) -> dict[str, Any]:
        """One Generate of an image node (docs/api.md, `POST canvases/{id}/nodes/{node_id}/generate`):
        `graph` is `{nodes, edges}`, the node, the edges into it and their sources as the caller holds
        them (possibly newer than the stored canvas, which must exist). Builds the jobs' bodies
        (imagen_worker.service.generate), resolves the image it refines from under RLS and queues one
        job per variant under one new group, in one transaction: `{"jobs": [Job]}`. With an
        idempotency key, a repeat returns the first generation's jobs (variant i holds `{key}:{i}`)."""
        canvas_uuid = _uuid(canvas_id, "canvas_id")
        body: GenerateGraph = parse_body(graph, GenerateGraph)
        inputs = node_inputs(
            [n.model_dump(mode="json") for n in body.nodes], [e.model_dump(mode="json") for e in body.edges], node_id
        )
        _check_idempotency_key(idempotency_key, suffix=f":{MAX_VARIANTS - 1}")
        capabilities = self._node_capabilities(inputs.node.provider, inputs.node.model)
        keys = [f"{idempotency_key}:{i}" for i in range(inputs.node.variants)] if idempotency_key else None
        async with self.transaction(owner) as conn:
            if await conn.fetchval(q("visible_canvas"), canvas_uuid) is None:
                raise NotFound(
                    f"canvas_id: no canvas {canvas_uuid} among your canvases; save it first (PUT canvases/{{id}})",
                    field="canvas_id",
                )
            if keys:
                repeat = {r["idempotency_key"]: r["job"] for r in await conn.fetch(q("jobs_by_keys"), owner, keys)}
                if repeat:
                    found = [repeat[k] for k in keys if k in repeat]
                    return {"jobs": [await self._queued_json(conn, owner, j, {}) for j in found]}
            source = await self._refined_image(conn, inputs) if inputs.refines_job else None
            bodies = node_job_bodies(
                inputs,
                canvas_id=str(canvas_uuid),
                group_id=str(uuid.uuid4()),
                source=source,
                capabilities=capabilities,
            )
            rows = [self._job_row(b, default_priority, keys[i] if keys else None) for i, b in enumerate(bodies)]
            return {"jobs": await self._insert_jobs(conn, owner, rows)}

    def _node_capabilities(self, provider_name: str | None, model: str | None) -> Capabilities:
        """The capabilities of an image node's model (the provider's default model when it names none)."""
        try:
            provider = self.providers.get(provider_name or self.config.default_provider)
        except SpecError as exc:
            raise InvalidField(str(exc), field="provider") from None
        try:
            return provider.capabilities(model or provider.default_model)
        except SpecError as exc:
            raise _field_error(exc) from None

    async def _refined_image(self, conn: Connection, inputs: NodeInputs) -> SourceImage | None:
        """What made the image the node refines from: its source node's current job, the owner's only."""
        assert inputs.refines_job is not None
        try:
            job_uuid = uuid.UUID(inputs.refines_job)
        except ValueError:
            field = inputs.refines_field or "previous_image_id"
            raise InvalidField(f"{field}: {inputs.refines_job[:60]!r} is not a job id", field=field) from None
        row = await conn.fetchrow(q("refined_image"), job_uuid)
        if row is None:
            raise InvalidField(
                f"previous_image_id: image node {inputs.refines!r} shows job {job_uuid}, which is not among your "
                "jobs; generate that node again",
                field="previous_image_id",
            )
        spec = row["spec"] or {}
        modifiers = spec.get("style_modifiers") or []
        return SourceImage(
            image_id=str(row["image_id"]) if row["image_id"] is not None else None,
            prompt=row["prompt"],
            style_modifiers=tuple(m for m in modifiers if isinstance(m, str)),
        )

    async def cancel_jobs(self, owner: uuid.UUID, job_ids: Sequence[uuid.UUID | str]) -> list[str]:
        """Cancel those of the owner's jobs that are still pending or running; the ids cancelled."""
        ids = [_uuid(j, "job_id") for j in job_ids]
        async with self.transaction(owner) as conn:
            rows = await conn.fetch(q("cancel_jobs"), ids)
        return [str(r["id"]) for r in rows]

    async def list_jobs(self, owner: uuid.UUID, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        """One page of the owner's jobs, newest first: `{jobs, next_cursor}`."""
        query = query or {}
        unknown = set(query) - {"status", "canvas_id", "node_id", "provider", "group_id", "limit", "cursor"}
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidField(
                f"{name}: is not a filter; use status, canvas_id, node_id, provider, group_id, limit, cursor",
                field=name,
            )
        limit = query_int(query, "limit", 50, minimum=1, maximum=500)
        after_at, after_id = _decode_page_cursor(query.get("cursor"))
        async with self.transaction(owner) as conn:
            rows = await conn.fetch(
                q("jobs_page"),
                owner,
                query_status(query),
                query_uuid(query, "canvas_id"),
                query_str(query, "node_id"),
                query_str(query, "provider", max_length=40),
                query_uuid(query, "group_id"),
                after_at,
                after_id,
                limit + 1,
                None,
            )
            jobs = await self._jobs_json(conn, owner, rows[:limit])
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]["job"]
            next_cursor = _encode_page_cursor(last["created_at"], last["id"])
        return {"jobs": jobs, "next_cursor": next_cursor}

    async def recent_jobs(self, owner: uuid.UUID, query: Mapping[str, str], limit: int) -> list[dict[str, Any]]:
        """Up to `limit` of the owner's jobs, newest first, under the filters of `list_jobs`, page by page
        (the CLI's `imagen jobs` and the notebook's `history()`)."""
        out: list[dict[str, Any]] = []
        cursor = None
        while len(out) < limit:
            page = await self.list_jobs(
                owner, {**query, "limit": str(min(500, limit - len(out))), **({"cursor": cursor} if cursor else {})}
            )
            out += page["jobs"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return out

    async def get_job(self, owner: uuid.UUID, job_id: uuid.UUID | str) -> dict[str, Any]:
        job_uuid = _uuid(job_id, "job_id")
        async with self.transaction(owner) as conn:
            rows = await conn.fetch(q("jobs_page"), owner, None, None, None, None, None, None, None, 1, job_uuid)
            if not rows:
                raise JobNotFound(f"job {job_uuid} not found among your jobs", field="job_id")
            return (await self._jobs_json(conn, owner, rows))[0]

    async def cancel_job(self, owner: uuid.UUID, job_id: uuid.UUID | str) -> dict[str, Any]:
        """Cancel a pending job at once, a running one cooperatively; the job as it is after."""
        job_uuid = _uuid(job_id, "job_id")
        async with self.transaction(owner) as conn:
            try:
                await conn.fetchval(q("cancel_job"), job_uuid)
            except asyncpg.NoDataFoundError:
                raise JobNotFound(f"job {job_uuid} not found among your jobs", field="job_id") from None
        return await self.get_job(owner, job_uuid)

    async def job_events(self, owner: uuid.UUID, job_id: uuid.UUID | str) -> dict[str, Any]:
        """A job's whole trail, oldest first."""
        job_uuid = _uuid(job_id, "job_id")
        async with self.transaction(owner) as conn:
            rows = await conn.fetch(q("job_events"), job_uuid)
            if not rows:
                exists = await conn.fetch(q("jobs_page"), owner, None, None, None, None, None, None, None, 1, job_uuid)
                if not exists:
                    raise JobNotFound(f"job {job_uuid} not found among your jobs", field="job_id")
        return {"events": [event_json(dict(r)) for r in rows]}

    async def _jobs_json(self, conn: Connection, owner: uuid.UUID, rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
        images = await asyncio.gather(*(self._image_json(r["image"]) for r in rows if r["image"] is not None))
        by_job = {img["job_id"]: img for img in images}
        out = []
        for r in rows:
            job = r["job"]
            waiting = await self._waiting_reason(conn, owner, job["provider"]) if job["status"] == "pending" else None
            out.append(job_json(job, image=by_job.get(job["id"]), progress=r["progress"], waiting_for_worker=waiting))
        return out

    # -- workers -------------------------------------------------------------------------------

    async def live_workers(self, owner: uuid.UUID) -> list[dict[str, Any]]:
        async with self.transaction(owner) as conn:
            return await self._live_workers(conn, owner, fresh=True)

    async def _live_workers(self, conn: Connection, owner: uuid.UUID, *, fresh: bool = False) -> list[dict[str, Any]]:
        """The live workers this owner's jobs can run on (cached a second: a page of 500 jobs asks once)."""
        seen = self._workers.get(owner)
        now = time.monotonic()
        if fresh or seen is None or now - seen.at > 1.0:
            rows = await conn.fetch(q("live_workers"), self.config.worker_stale_seconds)
            seen = _WorkersSeen(now, [worker_json(dict(r)) for r in rows])
            self._workers[owner] = seen
        return seen.rows

    async def _waiting_reason(
        self, conn: Connection, owner: uuid.UUID, provider: str, *, fresh: bool = False
    ) -> str | None:
        """Why no live worker can run a job of `provider` for this owner, or None when one can."""
        workers = await self._live_workers(conn, owner, fresh=fresh)
        if any(provider in w["providers"] for w in workers):
            return None
        if not workers:
            return "no worker is running; start one with `imagen worker` (or run JupyterLab with the imagen-canvas extension)"
        runs = sorted({p for w in workers for p in w["providers"]})
        return (
            f"no live worker can run provider {provider}: the {len(workers)} live worker(s) run "
            f"{', '.join(runs) or 'no provider'}; configure {provider} where a worker runs (docs/providers.md)"
        )

    # -- images --------------------------------------------------------------------------------

    async def get_image(self, owner: uuid.UUID, image_id: uuid.UUID | str) -> dict[str, Any]:
        image_uuid = _uuid(image_id, "image_id")
        async with self.transaction(owner) as conn:
            row = await conn.fetchval(q("image"), image_uuid)
        if row is None:
            raise NotFound(f"image {image_uuid} not found among your images", field="image_id")
        return await self._image_json(row)

    async def image_content(
        self, owner: uuid.UUID, image_id: uuid.UUID | str, variant: ImageVariant = "full"
    ) -> tuple[str, bytes]:
        """(content type, bytes) of an image or its WebP thumbnail."""
        image_uuid = _uuid(image_id, "image_id")
        async with self.transaction(owner) as conn:
            row = await conn.fetchval(q("image"), image_uuid)
        if row is None:
            raise NotFound(f"image {image_uuid} not found among your images", field="image_id")
        if variant == "thumbnail" and row.get("thumb_path"):
            return "image/webp", await self.storage.get(row["thumb_path"])
        return row["content_type"], await self.storage.get(row["path"])

    async def image_url(self, row: Mapping[str, Any], variant: ImageVariant = "full") -> str:
        path = row["thumb_path"] if variant == "thumbnail" and row.get("thumb_path") else row["path"]
        return await self.storage.url(path, expires_in=self.config.url_expires_in)

    async def _image_json(self, row: dict[str, Any]) -> dict[str, Any]:
        if not self.config.sign_urls:
            return image_json(row, url=None, thumbnail_url=None, expires_at=None)
        url, thumb = await asyncio.gather(self.image_url(row), self.image_url(row, "thumbnail"))
        expires_at = datetime.now(UTC) + timedelta(seconds=self.config.url_expires_in)
        return image_json(row, url=url, thumbnail_url=thumb, expires_at=expires_at)

    # -- canvases ------------------------------------------------------------------------------

    async def list_canvases(self, owner: uuid.UUID, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        limit = query_int(query or {}, "limit", 200, minimum=1, maximum=1000)
        async with self.transaction(owner) as conn:
            rows = await conn.fetch(q("canvases"), owner, limit)
        return {"canvases": [worker_json(dict(r)) for r in rows]}

    async def get_canvas(self, owner: uuid.UUID, canvas_id: uuid.UUID | str) -> dict[str, Any]:
        canvas_uuid = _uuid(canvas_id, "canvas_id")
        async with self.transaction(owner) as conn:
            canvas = await self._canvas(conn, canvas_uuid)
        if canvas is None:
            raise NotFound(f"canvas {canvas_uuid} not found among your canvases", field="canvas_id")
        return canvas

    async def _canvas(self, conn: Connection, canvas_id: uuid.UUID) -> dict[str, Any] | None:
        row = await conn.fetchrow(q("canvas"), canvas_id)
        if row is None:
            return None
        return canvas_json(row["canvas"], row["nodes"], row["edges"])

    async def save_canvas(
        self, owner: uuid.UUID, canvas_id: uuid.UUID | str, body: bytes | str | Mapping[str, Any] | None
    ) -> tuple[bool, dict[str, Any]]:
        """Replace a canvas's graph if `version` is the stored one (0 creates it). (created, canvas)."""
        canvas_uuid = _uuid(canvas_id, "canvas_id")
        save: CanvasSave = parse_body(body, CanvasSave)
        save.check_graph()
        nodes = [n.model_dump(mode="json") for n in save.nodes]
        edges = [e.model_dump(mode="json") for e in save.edges]
        viewport = save.viewport.model_dump() if save.viewport else None
        async with self.transaction(owner) as conn:
            stored = await conn.fetchval(q("lock_canvas"), canvas_uuid)
            created = stored is None
            if created:
                if save.version != 0:
                    raise NotFound(
                        f"canvas {canvas_uuid} does not exist (deleted?); save with version 0 to create it",
                        field="canvas_id",
                    )
                row = await conn.fetchrow(q("insert_canvas"), canvas_uuid, owner, save.name, viewport)
                if row is None:
                    raise VersionConflict(
                        f"version: canvas {canvas_uuid} was created meanwhile; load it and save again",
                        field="version",
                        current=await self._canvas(conn, canvas_uuid),
                    )
                head = {
                    "version": row["version"],
                    "name": save.name or "Untitled canvas",
                    "viewport": viewport or {},
                    "created_at": row["created_at"],
                    "updated_at": row["updated_at"],
                }
            elif stored != save.version:
                raise VersionConflict(
                    f"version: {save.version} is stale, the canvas is at version {stored}; merge with `current` "
                    "and save again",
                    field="version",
                    current=await self._canvas(conn, canvas_uuid),
                )
            else:
                updated = await conn.fetchrow(q("update_canvas"), canvas_uuid, save.name, viewport)
                assert updated is not None
                head = dict(updated)
            try:
                await conn.fetchrow(q("replace_canvas_graph"), canvas_uuid, owner, nodes)
                if edges:
                    await conn.execute(q("insert_canvas_edges"), canvas_uuid, owner, edges)
            except asyncpg.CheckViolationError as exc:
                raise _check_error(exc) from None
        canvas = {"id": str(canvas_uuid), "owner_user_id": str(owner), **head}
        return created, canvas_json(canvas, nodes, edges)

    async def delete_canvas(self, owner: uuid.UUID, canvas_id: uuid.UUID | str) -> None:
        canvas_uuid = _uuid(canvas_id, "canvas_id")
        async with self.transaction(owner) as conn:
            if await conn.fetchval(q("delete_canvas"), canvas_uuid) is None:
                raise NotFound(f"canvas {canvas_uuid} not found among your canvases", field="canvas_id")

    # -- providers, stats, health --------------------------------------------------------------

    async def providers_table(self, owner: uuid.UUID) -> dict[str, Any]:
        """Every provider, whether it can run here now (and why not), and how many live workers run it."""
        workers = await self.live_workers(owner)
        table = []
        for name in self.providers.names():
            reason = self.providers.unavailable_reason(name)
            entry: dict[str, Any] = {
                "name": name,
                "available": reason is None,
                "reason": reason,
                "live_workers": sum(1 for w in workers if name in w["providers"]),
                "default_model": None,
                "models": [],
            }
            with contextlib.suppress(SpecError):
                provider = self.providers.get(name)
                entry["default_model"] = provider.default_model
                entry["models"] = [{"model": m, **c.as_dict()} for m, c in provider.models.items()]
            table.append(entry)
        return {"default_provider": self.config.default_provider, "providers": table}

    async def stats(self, owner: uuid.UUID | None, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Counts, durations and cost of the owner's jobs; `owner` None: of every owner the pool's own
        login can see (an operator's report, `imagen jobs --stats --all-owners`; a user's own login
        still sees only its own rows)."""
        from ..pricing import usage_report

        since_raw = query_str(query or {}, "since", max_length=40)
        since = None
        if since_raw is not None:
            try:
                since = datetime.fromisoformat(since_raw)
            except ValueError:
                raise InvalidField(f"since: {since_raw!r} is not an ISO 8601 time", field="since") from None
            since = since if since.tzinfo else since.replace(tzinfo=UTC)
        async with self.transaction(owner) if owner is not None else as_login(self.pool) as conn:
            return await usage_report(conn, since=since, owner_user_id=owner)

    async def health(self, owner: uuid.UUID) -> dict[str, Any]:
        pending = await pending_migrations(self.pool)
        return {
            "pending_migrations": pending,
            "owner_user_id": str(owner),
            "storage_origin": self.storage_origin(),
            "default_provider": self.config.default_provider,
            "workers": await self.live_workers(owner),
        }

    def storage_origin(self) -> str | None:
        """The origin image URLs may come from besides this server's (Supabase's), or None."""
        project_url = getattr(self.storage, "project_url", None)
        if not isinstance(project_url, str):
            return None
        scheme, _, rest = project_url.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0]}"


def _uuid(value: uuid.UUID | str, name: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"{name}: {value[:60]!r} is not an id of yours (not a UUID)", field=name) from None


def _check_idempotency_key(key: str | None, *, suffix: str = "") -> None:
    """An Idempotency-Key header: 1 to 200 characters (with `suffix`, which the service appends)."""
    if key is not None and not 1 <= len(key) + len(suffix) <= 200:
        raise InvalidField(
            f"Idempotency-Key: must be 1 to {200 - len(suffix)} characters (a UUID per request is usual)",
            field="Idempotency-Key",
        )


def _field_error(exc: SpecError) -> InvalidField:
    field = exc.problems[0][0]
    if field is None:
        return InvalidField(str(exc))
    return InvalidField("; ".join(f"{f}: {t}" if f else t for f, t in exc.problems), field=field)


@contextlib.contextmanager
def _job_insert_errors(canvas_missing: str) -> Iterator[None]:
    """The database's refusals of new jobs as the API's errors: an unknown canvas, a check, the quota."""
    try:
        yield
    except asyncpg.ForeignKeyViolationError:
        raise InvalidField(canvas_missing, field="canvas_id") from None
    except asyncpg.CheckViolationError as exc:
        raise _check_error(exc) from None
    except asyncpg.ConfigurationLimitExceededError as exc:
        raise _quota_error(exc) from None


def _check_error(exc: asyncpg.CheckViolationError) -> InvalidField:
    """The database's own guard (inline image data, sizes) as a field error."""
    message = exc.args[0] if exc.args else str(exc)
    hint = getattr(exc, "hint", None)
    field = None
    for column, name in (
        ("jobs.prompt", "prompt"),
        ("jobs.spec", "options"),
        ("canvas_nodes.data", "nodes"),
        ("canvases.viewport", "viewport"),
    ):
        if column in message:
            field = name
    return InvalidField(f"{field or 'body'}: {message}{f'; {hint}' if hint else ''}", field=field)


def _quota_error(exc: asyncpg.ConfigurationLimitExceededError) -> TooManyPending:
    """A quota the database refused the job for (migration 0009) as a 429."""
    message = exc.args[0] if exc.args else str(exc)
    if "a day" in message:
        now = datetime.now(UTC)
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        retry_after = (midnight - now).total_seconds()
    else:
        retry_after = 10.0
    hint = getattr(exc, "hint", None)
    return TooManyPending(f"{message}{f'; {hint}' if hint else ''}", retry_after=retry_after)


def _encode_page_cursor(created_at: str, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at}|{job_id}".encode()).decode().rstrip("=")


def _decode_page_cursor(raw: str | None) -> tuple[datetime | None, uuid.UUID | None]:
    if not raw:
        return None, None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        created_at, _, job_id = text.partition("|")
        return datetime.fromisoformat(created_at), uuid.UUID(job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidField(
            "cursor: not a page cursor; pass the next_cursor of the previous page, or leave it out", field="cursor"
        ) from None


__all__ = ["OWNER_ROLE", "ConfigError", "Service", "ServiceConfig", "as_login", "as_owner", "login_owner"]
