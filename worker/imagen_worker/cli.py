"""The `imagen` command: migrate, worker, submit, generate, jobs, cancel, providers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click

from . import __version__
from .config import Settings
from .db import connect, create_pool, resolve_database_url
from .errors import ImagenError
from .jobs import default_owner_id
from .migrate import migrate as run_migrations
from .queue import Worker, WorkerConfig
from .scheduling import BATCH
from .service import Service, ServiceConfig

T = TypeVar("T")

database_url_option = click.option(
    "--database-url",
    envvar="IMAGEN_DATABASE_URL",
    default=None,
    help="PostgreSQL URL [env IMAGEN_DATABASE_URL]; unset: the embedded database in the data directory.",
)


def _run(make: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(make())  # type: ignore[arg-type]
    except ImagenError as exc:
        raise click.ClickException(str(exc)) from None
    except asyncpg.PostgresError as exc:
        detail = f" ({exc.hint})" if getattr(exc, "hint", None) else ""
        raise click.ClickException(f"{exc}{detail}") from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def _owner(value: str | None) -> uuid.UUID:
    if value is None:
        return default_owner_id()
    try:
        return uuid.UUID(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a UUID", param_hint="--owner") from None


@click.group()
@click.version_option(__version__, prog_name="imagen")
def main() -> None:
    """imagen-canvas's job queue and image worker."""


@main.command()
@database_url_option
def migrate(database_url: str | None) -> None:
    """Apply pending schema migrations (safe to run concurrently; a no-op when up to date)."""

    async def go() -> None:
        conn = await connect(database_url, migrate=False)
        try:
            result = await run_migrations(conn)
        finally:
            await conn.close()
        if result.applied:
            for name in result.applied:
                click.echo(f"applied {name}")
            click.echo(f"{len(result.applied)} migration(s) applied")
        else:
            click.echo(f"up to date: {len(result.already)} migration(s) already applied, nothing to do")

    _run(go)


@main.command()
@database_url_option
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs in flight at once [env IMAGEN_WORKER_CONCURRENCY, 8].",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    default=None,
    help="Jobs claimed ahead of a free slot [env IMAGEN_WORKER_PREFETCH, 0]; helps many short jobs.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05),
    default=None,
    help="Safety poll, seconds [env IMAGEN_POLL_INTERVAL, 5].",
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=1),
    default=None,
    help="Lease length, renewed by heartbeat [env IMAGEN_LEASE_SECONDS, 30].",
)
@click.option(
    "--job-timeout",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Per-job timeout, seconds [env IMAGEN_JOB_TIMEOUT, 300].",
)
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(min=0),
    default=None,
    help="On SIGTERM, seconds in-flight jobs may finish [env IMAGEN_SHUTDOWN_GRACE, 30].",
)
@click.option(
    "--scope",
    type=click.Choice(["all", "owner"]),
    default="all",
    show_default=True,
    help="Run every owner's jobs, or one owner's.",
)
@click.option(
    "--owner", default=None, help="With --scope owner: the owner UUID (default: this login's local owner id)."
)
@click.option(
    "--poll-only", is_flag=True, help="No LISTEN (for PgBouncer transaction mode or Supavisor): poll instead."
)
@click.option(
    "--webhook-port",
    type=click.IntRange(0, 65535),
    envvar="IMAGEN_WEBHOOK_PORT",
    default=None,
    help="Also serve POST /imagen/webhooks/{provider} on this port [env IMAGEN_WEBHOOK_PORT; unset: no server].",
)
@click.option(
    "--webhook-host",
    envvar="IMAGEN_WEBHOOK_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address of the webhook server [env IMAGEN_WEBHOOK_HOST]; put a TLS reverse proxy in front of it.",
)
@click.option(
    "--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]), show_default=True
)
def worker(
    database_url: str | None,
    concurrency: int | None,
    prefetch: int | None,
    poll_interval: float | None,
    lease_seconds: float | None,
    job_timeout: float | None,
    shutdown_grace: float | None,
    scope: str,
    owner: str | None,
    poll_only: bool,
    webhook_port: int | None,
    webhook_host: str,
    log_level: str,
) -> None:
    """Run the worker until SIGTERM/SIGINT (graceful; a second signal exits at once)."""
    from .pipeline import ImagePipeline
    from .queue import Worker, WorkerConfig
    from .storage import storage_from_settings

    _setup_logging(log_level)
    try:
        settings = Settings.from_env()
    except ImagenError as exc:
        raise click.ClickException(str(exc)) from None
    config = WorkerConfig(
        concurrency=concurrency or settings.concurrency,
        prefetch=prefetch if prefetch is not None else settings.prefetch,
        poll_interval=poll_interval or settings.poll_interval,
        lease_seconds=lease_seconds or settings.lease_seconds,
        job_timeout=job_timeout or settings.job_timeout,
        shutdown_grace=shutdown_grace if shutdown_grace is not None else settings.shutdown_grace,
        scope=scope,
        owner_user_id=_owner(owner) if scope == "owner" else None,
        poll_only=poll_only,
    )

    from .limits import limits_from_env
    from .pricing import price_table

    # Malformed limits or prices stop the worker here, not job by job later.
    try:
        limits_from_env()
        price_table()
    except ImagenError as exc:
        raise click.ClickException(str(exc)) from None

    async def go() -> None:
        url = resolve_database_url(database_url, settings)
        (await connect(url)).terminate()  # migrate before work starts
        w = Worker(url, ImagePipeline(storage_from_settings(settings)), config)
        w.install_signal_handlers()
        async with contextlib.AsyncExitStack() as stack:
            if webhook_port is not None:
                from .webhook_server import serve_webhooks

                await stack.enter_async_context(serve_webhooks(url, webhook_host, webhook_port))
            await w.run()

    _run(go)


def _spec_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--provider", default=None, help="[env IMAGEN_DEFAULT_PROVIDER, local]"),
        click.option("--model", default=None, help="[the provider's first model]"),
        click.option("--owner", default=None, help="Owner UUID (default: this login's owner id)."),
        click.option("--size", default=None, help="WIDTHxHEIGHT, e.g. 1024x1024."),
        click.option("--aspect-ratio", default=None, help="e.g. 16:9."),
        click.option("--quality", default=None),
        click.option("--seed", type=int, default=None),
        click.option("--negative-prompt", default=None),
        click.option("--style", "style_modifiers", multiple=True, help="A style modifier (repeatable)."),
        click.option(
            "--priority",
            type=click.IntRange(0, 199),
            default=None,
            help="Lower runs first: 0-99 interactive, 100-199 batch [50; with --batch 150].",
        ),
        click.option("--batch", is_flag=True, help="Queue at batch priority (behind interactive work)."),
        click.option("--idempotency-key", default=None, help="A repeat with the same key returns the first job."),
        click.option("--option", "options", multiple=True, help="Provider option KEY=JSON (repeatable)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _job_body(prompt: str, kw: dict[str, Any]) -> tuple[uuid.UUID, str | None, dict[str, Any]]:
    """(owner, idempotency key, the `POST jobs` body) from the command's options."""
    owner = _owner(kw.pop("owner"))
    key = kw.pop("idempotency_key")
    if kw.pop("batch") and kw.get("priority") is None:
        kw["priority"] = BATCH
    options: dict[str, Any] = {}
    for item in kw.pop("options"):
        name, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} must be KEY=VALUE", param_hint="--option")
        try:
            options[name] = json.loads(raw)
        except json.JSONDecodeError:
            options[name] = raw
    body = {k: v for k, v in kw.items() if v not in (None, ())}
    if "style_modifiers" in body:
        body["style_modifiers"] = list(body["style_modifiers"])
    if options:
        body["options"] = options
    return owner, key, {"prompt": prompt, **body}


@asynccontextmanager
async def _service(database_url: str | None, settings: Settings, **config: Any) -> AsyncIterator[tuple[str, Service]]:
    """The service layer on a small pool (the CLI is one more transport over it); `config` overrides
    ServiceConfig's settings."""
    from .service import login_owner
    from .storage import storage_from_settings

    url = resolve_database_url(database_url, settings)
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        service_config = ServiceConfig.from_env(sign_urls=False, **config)
        yield (
            url,
            Service(pool, storage_from_settings(settings), config=service_config, login_owner=await login_owner(pool)),
        )
    finally:
        await pool.close()


@main.command()
@database_url_option
@_spec_options
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.argument("prompt")
def submit(database_url: str | None, prompt: str, as_json: bool, **kw: Any) -> None:
    """Queue a job and print its id."""
    owner, key, body = _job_body(prompt, kw)

    async def go() -> None:
        async with _service(database_url, Settings.from_env()) as (_, service):
            job = await service.create_job(service.login_owner or owner, body, idempotency_key=key)
        click.echo(json.dumps(job) if as_json else job["id"])
        if job["waiting_for_worker"] and not as_json:
            click.echo(f"waiting: {job['waiting_for_worker']}", err=True)

    _run(go)


@main.command()
@database_url_option
@_spec_options
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to save the image."
)
@click.option(
    "--timeout", type=float, default=600.0, show_default=True, help="Give up waiting after this many seconds."
)
@click.option(
    "--local-worker", is_flag=True, help="Run a worker in this process while waiting (for this owner's jobs)."
)
@click.argument("prompt")
def generate(
    database_url: str | None, prompt: str, output: Path, timeout: float, local_worker: bool, **kw: Any
) -> None:
    """Queue a job, wait for it with a progress line, and save the image."""
    from tqdm import tqdm

    from .service import EventFeed

    owner, key, body = _job_body(prompt, kw)
    settings = Settings.from_env()

    async def go() -> None:
        async with _service(database_url, settings) as (url, service):
            me = service.login_owner or owner
            feed = EventFeed(url, service.pool, login_scoped=service.login_owner is not None)
            await feed.start()
            worker: Worker | None = None
            worker_task: asyncio.Task[None] | None = None
            bar = tqdm(total=100, desc="pending", unit="%", file=sys.stderr, leave=True)
            try:
                await feed.wait_listening()
                events = await feed.subscribe(me)
                if local_worker:
                    from .pipeline import ImagePipeline
                    from .storage import storage_from_settings

                    worker = Worker(
                        url,
                        ImagePipeline(storage_from_settings(settings)),
                        WorkerConfig(concurrency=2, scope="owner", owner_user_id=me),
                    )
                    worker_task = asyncio.create_task(worker.run())
                job = await service.create_job(me, body, idempotency_key=key)
                click.echo(f"job {job['id']}", err=True)
                deadline = time.monotonic() + timeout
                while job["status"] not in ("done", "failed", "cancelled"):
                    bar.set_description(job["status"] if not job["waiting_for_worker"] else "waiting for a worker")
                    bar.n = int((job["progress"] or 0) * 100)
                    bar.refresh()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise click.ClickException(
                            f"job {job['id']} still {job['status']} after {timeout:g} s; "
                            f"{job['waiting_for_worker'] or 'is a worker running (`imagen worker`)?'}"
                        )
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(events.get(), min(remaining, 1.0))
                    job = await service.get_job(me, job["id"])
                bar.set_description(job["status"])
                bar.n = 100 if job["status"] == "done" else bar.n
                bar.refresh()
            finally:
                bar.close()
                await feed.stop()
                if worker is not None and worker_task is not None:
                    worker.stop()
                    await worker_task
            if job["status"] != "done":
                raise click.ClickException(f"job {job['id']} {job['status']}: {job['error']}")
            _, data = await service.image_content(me, job["image_id"])
        await asyncio.to_thread(output.write_bytes, data)
        click.echo(str(output))

    _run(go)


_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _parse_since(value: str) -> datetime:
    """`--since`: a duration back from now (90s, 30m, 12h, 7d, 2w) or an ISO 8601 time (UTC unless given)."""
    text = value.strip()
    number, unit = text[:-1], text[-1:].lower()
    if unit in _SINCE_UNITS and number.replace(".", "", 1).isdigit():
        return datetime.now(UTC) - timedelta(seconds=float(number) * _SINCE_UNITS[unit])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a duration (90s, 30m, 12h, 7d, 2w) nor an ISO time (2025-01-31T09:00)",
            param_hint="--since",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _echo_stats(report: dict[str, Any]) -> None:
    window = f"created since {report['since']}" if report["since"] else "all time"
    click.echo(f"jobs ({window}): {report['jobs']}")
    click.echo("  " + "  ".join(f"{status} {n}" for status, n in report["counts"].items()))
    run, wait = report["run_seconds"], report["queue_wait_seconds"]
    click.echo(
        f"run time (started → completed, done jobs): p50 {_fmt_seconds(run['p50'])}  "
        f"p95 {_fmt_seconds(run['p95'])}  (n={run['n']})"
    )
    click.echo(
        f"queue wait (created → started):            p50 {_fmt_seconds(wait['p50'])}  "
        f"p95 {_fmt_seconds(wait['p95'])}  (n={wait['n']})"
    )
    click.echo("by provider/model:")
    for m in report["by_model"]:
        unpriced = f"  ({m['unpriced_done']} done without a price)" if m["unpriced_done"] else ""
        click.echo(
            f"  {m['provider'] + '/' + m['model']:<40} jobs {m['jobs']:>6}  done {m['done']:>6}  "
            f"failed {m['failed']:>5}  run p50 {_fmt_seconds(m['run_p50_s']):>9}  ${m['cost_usd']:.6f}{unpriced}"
        )
    click.echo(f"total cost: ${report['cost_usd']:.6f}")


@main.command()
@database_url_option
@click.option("--status", type=click.Choice(["pending", "running", "done", "failed", "cancelled"]), default=None)
@click.option("--provider", default=None, help="Only this provider's jobs.")
@click.option("--owner", default=None, help="Whose jobs (default: this login's owner id).")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.option(
    "--json", "as_json", is_flag=True, help="One job per line, as the REST API gives it (with --stats: one object)."
)
@click.option(
    "--stats",
    is_flag=True,
    help="Counts by status, p50/p95 run time and queue wait, and cost by provider/model, instead of the list.",
)
@click.option(
    "--since",
    default=None,
    metavar="WHEN",
    help="With --stats: only jobs created since WHEN, a duration back from now (30m, 12h, 7d) or an ISO time.",
)
@click.option(
    "--all-owners",
    is_flag=True,
    help="With --stats: every owner the database login can see (an operator's report of a shared pool).",
)
def jobs(
    database_url: str | None,
    status: str | None,
    provider: str | None,
    owner: str | None,
    limit: int,
    as_json: bool,
    stats: bool,
    since: str | None,
    all_owners: bool,
) -> None:
    """List an owner's recent jobs, newest first; or, with --stats, usage and cost."""
    if since is not None and not stats:
        raise click.UsageError("--since goes with --stats")
    if all_owners and not stats:
        raise click.UsageError("--all-owners goes with --stats; the list is one owner's (--owner)")
    if stats and (status is not None or provider is not None):
        raise click.UsageError("--stats counts every status and provider; leave out --status and --provider")
    since_at = _parse_since(since) if since is not None else None
    owner_id = _owner(owner)

    async def go_stats() -> None:
        async with _service(database_url, Settings.from_env()) as (_, service):
            query = {"since": since_at.isoformat()} if since_at is not None else {}
            who = None if all_owners else (service.login_owner or owner_id)
            report = await service.stats(who, query)
        if as_json:
            click.echo(json.dumps(report))
        else:
            _echo_stats(report)

    async def go_list() -> None:
        query = {k: v for k, v in {"status": status, "provider": provider}.items() if v is not None}
        async with _service(database_url, Settings.from_env()) as (_, service):
            found = await service.recent_jobs(service.login_owner or owner_id, query, limit)
        for job in found:
            if as_json:
                click.echo(json.dumps(job))
            else:
                err = f"  {job['error']}" if job["error"] else ""
                click.echo(
                    f"{job['id']}  {job['status']:<9}  {job['provider']}/{job['model']}  {job['prompt'][:50]!r}{err}"
                )

    _run(go_stats if stats else go_list)


@main.command()
@database_url_option
@click.option("--owner", default=None, help="The job's owner UUID (default: this login's owner id).")
@click.argument("job_id", type=click.UUID)
def cancel(database_url: str | None, owner: str | None, job_id: uuid.UUID) -> None:
    """Cancel a job: at once if pending; a running job's worker aborts it."""
    owner_id = _owner(owner)

    async def go() -> None:
        async with _service(database_url, Settings.from_env()) as (_, service):
            job = await service.cancel_job(service.login_owner or owner_id, job_id)
        click.echo(f"{job_id} {job['status']}")

    _run(go)


@main.command()
@database_url_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, as `GET health` lists them.")
@click.option(
    "--stale-seconds",
    type=click.FloatRange(min=1),
    envvar="IMAGEN_WORKER_STALE_SECONDS",
    default=30.0,
    show_default=True,
    help="A worker silent this long is not live [env IMAGEN_WORKER_STALE_SECONDS].",
)
def workers(database_url: str | None, as_json: bool, stale_seconds: float) -> None:
    """The live workers this login's jobs can run on (the shared pool and its own): host, pid, scope,
    the providers each can run, when it started and last beat."""
    owner_id = _owner(None)

    async def go() -> None:
        async with _service(database_url, Settings.from_env(), worker_stale_seconds=stale_seconds) as (_, service):
            rows = await service.live_workers(service.login_owner or owner_id)
        if not rows:
            click.echo("no live worker: jobs wait until one starts (`imagen worker`)")
        for r in rows:
            if as_json:
                click.echo(json.dumps(r))
            else:
                owner = f" owner={r['owner_user_id']}" if r["owner_user_id"] else ""
                click.echo(
                    f"{r['id']}  {r['scope']}{owner}  concurrency={r['concurrency']}  "
                    f"providers={','.join(r['providers']) or '-'}  started={r['started_at']}  "
                    f"last_seen={r['last_seen_at']}"
                )

    _run(go)


@main.command()
@database_url_option
@click.option("--json", "as_json", is_flag=True, help="The table as `GET providers` gives it.")
def providers(database_url: str | None, as_json: bool) -> None:
    """The providers, their models and what each accepts; whether each can run here now, and why not."""
    owner_id = _owner(None)

    async def go() -> None:
        async with _service(database_url, Settings.from_env()) as (_, service):
            table = await service.providers_table(service.login_owner or owner_id)
        if as_json:
            click.echo(json.dumps(table, indent=2))
            return
        for entry in table["providers"]:
            state = "available" if entry["available"] else f"unavailable: {entry['reason']}"
            click.echo(f"{entry['name']} ({state}; live workers: {entry['live_workers']})")
            for caps in entry["models"]:
                click.echo(
                    f"  {caps['model']}: sizes={caps['sizes'] or 'any'} aspect_ratios={caps['aspect_ratios'] or 'any'} "
                    f"qualities={caps['qualities'] or '-'} seed={caps['seed']} "
                    f"negative_prompt={caps['negative_prompt']} edit={caps['edit']}"
                )

    _run(go)


@main.group("users")
def users_group() -> None:
    """JupyterHub users with database logins of their own (docs/jupyterhub.md).

    Run with an admin connection that may create roles. Each user's server gets only its own login,
    and row-level security for it is keyed on that login, so a user's own code sees only their rows.
    """


@users_group.command("add")
@database_url_option
@click.argument("name")
@click.option("--worker", is_flag=True, help="The login may also run the user's own worker (per-user layout).")
@click.option("--max-pending", type=click.IntRange(min=1), default=None, help="Pending jobs the user may have.")
@click.option("--max-cost-per-day", type=click.FloatRange(min=0), default=None, help="USD a day's jobs may cost.")
@click.option(
    "--auth-user-id",
    type=click.UUID,
    default=None,
    help="The user's Supabase auth.users id (on Supabase: required, and their owner id).",
)
@click.option("--unlimited", is_flag=True, help="Clear the user's quotas.")
@click.option("--json", "as_json", is_flag=True)
def users_add(
    database_url: str | None,
    name: str,
    worker: bool,
    max_pending: int | None,
    max_cost_per_day: float | None,
    auth_user_id: uuid.UUID | None,
    unlimited: bool,
    as_json: bool,
) -> None:
    """Create (or update) hub user NAME: an owner id, a login role, quotas. Idempotent: what is not
    given keeps its stored value."""
    from decimal import Decimal

    from .users import add_user

    async def go() -> None:
        conn = await connect(database_url)
        try:
            user = await add_user(
                conn,
                name,
                worker=worker,
                max_pending=max_pending,
                max_cost_per_day=Decimal(str(max_cost_per_day)) if max_cost_per_day is not None else None,
                auth_user_id=auth_user_id,
                unlimited=unlimited,
            )
        finally:
            await conn.close()
        click.echo(
            json.dumps(user.as_dict())
            if as_json
            else f"{user.hub_name}: owner {user.owner_user_id}, role {user.db_role}"
        )

    _run(go)


@users_group.command("remove")
@database_url_option
@click.argument("name")
def users_remove(database_url: str | None, name: str) -> None:
    """Drop hub user NAME's login (their jobs and images stay). Idempotent."""
    from .users import remove_user

    async def go() -> None:
        conn = await connect(database_url)
        try:
            removed = await remove_user(conn, name)
        finally:
            await conn.close()
        click.echo(f"{name}: removed" if removed else f"{name}: was not a user")

    _run(go)


@users_group.command("pool-login")
@database_url_option
def users_pool_login(database_url: str | None) -> None:
    """Print the URL of the shared pool's own login (JupyterHub layout "pool"), with a fresh password.

    The login may run `imagen worker --scope all` and nothing more (no canvases, no roles, no DDL);
    the previous password stops working. Pass the URL to configure(pool_database_url=...) and to pool
    workers on other machines."""
    from .users import new_pool_login

    async def go() -> None:
        conn = await connect(database_url)
        try:
            url = await new_pool_login(conn, resolve_database_url(database_url))
        finally:
            await conn.close()
        click.echo(url)

    _run(go)


@users_group.command("list")
@database_url_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def users_list(database_url: str | None, as_json: bool) -> None:
    """The hub users, their owner ids, roles and quotas."""
    from .users import list_users

    async def go() -> None:
        conn = await connect(database_url)
        try:
            found = await list_users(conn)
        finally:
            await conn.close()
        for user in found:
            if as_json:
                click.echo(json.dumps(user.as_dict()))
            else:
                quota = f" max_pending={user.max_pending}" if user.max_pending else ""
                quota += f" max_cost_per_day={user.max_cost_per_day}" if user.max_cost_per_day is not None else ""
                click.echo(f"{user.hub_name}  {user.owner_user_id}  {user.db_role}{quota}")
        if not found and not as_json:
            click.echo("no hub users")

    _run(go)


@main.group("limits")
def limits_group() -> None:
    """Per-provider concurrency and rate limits, held across every worker sharing the database.

    Workers pick up a change within 5 s. IMAGEN_PROVIDER_LIMITS (JSON) sets the same rows when a worker starts.
    """


def _echo_limits(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no provider limits: every provider is unlimited")
        return
    click.echo(f"{'provider':<20} {'max_concurrent':>14} {'rpm':>10} {'burst':>6} {'in_use':>7} {'tokens':>8}")
    for r in rows:
        rpm = r["requests_per_minute"]
        click.echo(
            f"{r['provider']:<20} {r['max_concurrent'] if r['max_concurrent'] is not None else '-':>14} "
            f"{f'{rpm:g}' if rpm is not None else '-':>10} {r['burst']:>6} {r['in_use']:>7} "
            f"{r['tokens'] if r['tokens'] is not None else '-':>8}"
        )


@limits_group.command("set")
@database_url_option
@click.argument("provider")
@click.option(
    "--max-concurrent",
    type=click.IntRange(min=0),
    default=None,
    help="Calls to PROVIDER in flight at once, across all workers; 0 removes the cap.",
)
@click.option(
    "--rpm",
    type=click.FloatRange(min=0, max=1_000_000),
    default=None,
    help="Calls to PROVIDER per minute, across all workers; 0 removes the rate limit.",
)
@click.option(
    "--burst",
    type=click.IntRange(min=1, max=100_000),
    default=None,
    help="With --rpm: calls that may start back to back after a quiet spell [1: evenly spaced].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the provider's limits as JSON.")
def limits_set(
    database_url: str | None,
    provider: str,
    max_concurrent: int | None,
    rpm: float | None,
    burst: int | None,
    as_json: bool,
) -> None:
    """Set PROVIDER's limits; options left out keep their current value."""
    from .limits import check_provider_name, list_limits, set_limit

    if max_concurrent is None and rpm is None and burst is None:
        raise click.UsageError("give --max-concurrent, --rpm and/or --burst")
    try:
        check_provider_name(provider)
    except ImagenError as exc:
        raise click.BadParameter(str(exc), param_hint="PROVIDER") from None

    async def go() -> None:
        conn = await connect(database_url)
        try:
            await set_limit(
                conn,
                provider,
                max_concurrent=max_concurrent or None,
                requests_per_minute=rpm or None,
                burst=burst,
                clear_max_concurrent=max_concurrent == 0,
                clear_requests_per_minute=rpm == 0,
            )
            rows = [r for r in await list_limits(conn) if r["provider"] == provider]
        finally:
            await conn.close()
        if as_json:
            click.echo(json.dumps(rows[0]))
        else:
            _echo_limits(rows)

    _run(go)


@limits_group.command("unset")
@database_url_option
@click.argument("provider")
def limits_unset(database_url: str | None, provider: str) -> None:
    """Remove PROVIDER's limits: its calls are unlimited again."""
    from .limits import delete_limit

    async def go() -> None:
        conn = await connect(database_url)
        try:
            removed = await delete_limit(conn, provider)
        finally:
            await conn.close()
        click.echo(f"{provider}: limits removed" if removed else f"{provider}: had no limits")

    _run(go)


@limits_group.command("list")
@database_url_option
@click.option("--json", "as_json", is_flag=True, help="A JSON array.")
def limits_list(database_url: str | None, as_json: bool) -> None:
    """Every provider's limits, with the calls in flight and the tokens available now."""
    from .limits import list_limits

    async def go() -> None:
        conn = await connect(database_url)
        try:
            rows = await list_limits(conn)
        finally:
            await conn.close()
        if as_json:
            click.echo(json.dumps(rows))
        else:
            _echo_limits(rows)

    _run(go)
