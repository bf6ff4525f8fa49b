"""The notebook API: `generate`, `agenerate`, `sweep`, `compare`, `history`, and the `Generation` and
`Gallery` they return, over the same service layer as the server extension (through the runtime).

Jobs run with no extra step: by a live worker where one is (the server extension's, a pool's),
otherwise by one the runtime starts in this process for the owner (and says so). The synchronous
forms work in a notebook (whose event loop is running), in an IPython terminal and in a script;
interrupting one cancels the jobs it submitted.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import html
import io
import itertools
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, overload

from imagen_worker.errors import ImagenError, InvalidField
from imagen_worker.scheduling import BATCH, INTERACTIVE
from imagen_worker.service import StreamClosed
from imagen_worker.service.cursor import Cursor

from .runtime import Notices, Runtime, runtime

TERMINAL = ("done", "failed", "cancelled")
DISPLAY_SIDE = 512
# A gallery laid out as a canvas: the view's image nodes are about 280 × 600 px.
COLUMN_SPACING, ROW_SPACING = 320.0, 660.0


class JobFailed(ImagenError):
    """A generation ended failed or cancelled; the message is the job's error."""

    def __init__(self, message: str, job: dict[str, Any]) -> None:
        super().__init__(message)
        self.job = job


class Generation:
    """One job and, once done, its image. Displays as the image with its spec, or as its error."""

    def __init__(self, job: dict[str, Any], rt: Runtime | None = None, *, sample: int | None = None) -> None:
        self.job = job
        self._rt = rt or runtime()
        # A sweep's seed position for a provider that takes no seed (its images are unseeded samples).
        self.sample = sample
        self._image_bytes: bytes | None = None
        self._thumb_bytes: bytes | None = None

    # -- the job -------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return str(self.job["id"])

    @property
    def status(self) -> str:
        return str(self.job["status"])

    @property
    def prompt(self) -> str:
        return str(self.job["prompt"])

    @property
    def provider(self) -> str:
        return str(self.job["provider"])

    @property
    def model(self) -> str:
        return str(self.job["model"])

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.job.get("spec") or {})

    @property
    def seed(self) -> int | None:
        """The seed that made the image (the provider's own when none was asked for), else the spec's."""
        image = self.job.get("image") or {}
        seed = image.get("seed", self.spec.get("seed"))
        return int(seed) if seed is not None else None

    @property
    def error(self) -> str | None:
        return self.job.get("error")

    @property
    def cost_usd(self) -> float | None:
        value = self.job.get("cost_usd")
        return float(value) if value is not None else None

    @property
    def duration_s(self) -> float | None:
        """started → completed, seconds (the provider's time plus the pipeline's)."""
        started, completed = self.job.get("started_at"), self.job.get("completed_at")
        if not started or not completed:
            return None
        return round((datetime.fromisoformat(completed) - datetime.fromisoformat(started)).total_seconds(), 3)

    def raise_for_status(self) -> Generation:
        """Raise JobFailed when the job did not end done; return self otherwise."""
        if self.status != "done":
            raise JobFailed(f"job {self.id} {self.status}: {self.error or 'no error recorded'}", self.job)
        return self

    # -- the image -----------------------------------------------------------------------------

    def _bytes(self, variant: str) -> bytes:
        self.raise_for_status()
        cached = self._image_bytes if variant == "full" else self._thumb_bytes
        if cached is not None:
            return cached
        rt = self._rt

        async def fetch() -> bytes:
            assert rt.service is not None
            return (await rt.service.image_content(rt.owner, self.job["image_id"], variant))[1]  # type: ignore[arg-type]

        data = rt.call(fetch)
        if variant == "full":
            self._image_bytes = data
        else:
            self._thumb_bytes = data
        return data

    @property
    def image(self) -> Any:
        """The image as a PIL image."""
        from PIL import Image

        img = Image.open(io.BytesIO(self._bytes("full")))
        img.load()
        return img

    @property
    def url(self) -> str | None:
        """A URL a browser of this Jupyter can load now (signed, expiring), or None before the job is done."""
        if self.status != "done":
            return None
        rt = self._rt

        async def sign() -> str:
            assert rt.service is not None
            image = self.job["image"] or await rt.service.get_image(rt.owner, self.job["image_id"])
            return await rt.service.image_url(image)

        return rt.call(sign)

    def save(self, path: str | Path) -> Path:
        """Write the image's bytes (as the provider made them) to `path`; returns the path."""
        target = Path(path)
        target.write_bytes(self._bytes("full"))
        return target

    # -- display -------------------------------------------------------------------------------

    def _repr_png_(self) -> bytes | None:
        if self.status != "done":
            return None
        data = self._bytes("full")
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return data
        out = io.BytesIO()
        self.image.save(out, format="PNG")
        return out.getvalue()

    def _repr_html_(self) -> str:
        meta = _meta_rows(self)
        if self.status != "done":
            colour = "var(--jp-error-color1, #c62828)" if self.status in ("failed", "cancelled") else "inherit"
            return (
                f'<div class="imagen-generation" style="border-left:3px solid {colour};padding:6px 10px">'
                f'<b style="color:{colour}">{html.escape(self.status)}</b>'
                f"{'<pre style=white-space:pre-wrap>' + html.escape(self.error) + '</pre>' if self.error else ''}"
                f"{meta}</div>"
            )
        src = _data_uri(self._display_bytes(), "image/webp")
        return (
            f'<figure class="imagen-generation" style="margin:0;display:flex;gap:12px;align-items:flex-start">'
            f'<img src="{src}" alt="{html.escape(self.prompt)}" style="max-width:{DISPLAY_SIDE}px;height:auto"/>'
            f"<figcaption>{meta}</figcaption></figure>"
        )

    def _display_bytes(self) -> bytes:
        """The image at display size as WebP (notebooks stay small; `.image` has the original)."""
        img = self.image
        img.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
        out = io.BytesIO()
        img.convert("RGB").save(out, format="WEBP", quality=90)
        return out.getvalue()

    def __repr__(self) -> str:
        return f"<Generation {self.id} {self.status} {self.provider}/{self.model} {self.prompt[:40]!r}>"


def _meta_rows(gen: Generation) -> str:
    rows = [("prompt", gen.prompt), ("provider", f"{gen.provider}/{gen.model}"), ("job", gen.id)]
    spec = {k: v for k, v in gen.spec.items() if k not in ("seed",)}
    if spec:
        rows.append(("spec", ", ".join(f"{k}={v}" for k, v in spec.items())))
    if gen.seed is not None:
        rows.append(("seed", str(gen.seed)))
    if gen.duration_s is not None:
        rows.append(("duration", f"{gen.duration_s:.2f} s"))
    if gen.cost_usd is not None:
        rows.append(("cost", f"${gen.cost_usd:.4f}"))
    cells = "".join(
        f"<tr><th style='text-align:left;padding-right:8px'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
        for k, v in rows
    )
    return f"<table style='font-size:12px'>{cells}</table>"


def _data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


class Gallery(Sequence[Generation]):
    """Generations in order (a sweep's grid, or history newest first): indexes like a list, filters
    with `where`, converts with `to_records` / `to_pandas`, lays out as a canvas with `to_canvas`,
    and displays as a labelled grid of thumbnails."""

    def __init__(self, items: Iterable[Generation]) -> None:
        self._items = list(items)

    @overload
    def __getitem__(self, index: int) -> Generation: ...
    @overload
    def __getitem__(self, index: slice) -> Gallery: ...
    def __getitem__(self, index: int | slice) -> Generation | Gallery:
        if isinstance(index, slice):
            return Gallery(self._items[index])
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Generation]:
        return iter(self._items)

    def where(self, predicate: Callable[[Generation], bool] | None = None, **fields: Any) -> Gallery:
        """The generations whose fields equal the given values (status="failed", provider="openai",
        seed=3, prompt=…), and for which `predicate` holds."""
        allowed = {"status", "provider", "model", "prompt", "seed", "id"}
        unknown = set(fields) - allowed
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidField(f"{name}: is not a field to filter on; use {', '.join(sorted(allowed))}", field=name)
        return Gallery(
            g
            for g in self._items
            if all(getattr(g, k) == v for k, v in fields.items()) and (predicate is None or predicate(g))
        )

    def to_records(self) -> list[dict[str, Any]]:
        """One row per job: job_id, prompt, seed, provider, model, status, duration_s, cost_usd, url, error."""
        urls = self._urls()
        return [
            {
                "job_id": g.id,
                "prompt": g.prompt,
                "seed": g.seed,
                "provider": g.provider,
                "model": g.model,
                "status": g.status,
                "duration_s": g.duration_s,
                "cost_usd": g.cost_usd,
                "url": urls.get(g.id),
                "error": g.error,
            }
            for g in self._items
        ]

    def to_pandas(self) -> Any:
        try:
            import pandas as pd
        except ImportError:
            raise ImagenError("Gallery.to_pandas needs pandas: pip install pandas (or use to_records())") from None
        return pd.DataFrame.from_records(self.to_records())

    def _urls(self) -> dict[str, str]:
        rt = runtime()
        done = [g for g in self._items if g.status == "done" and g.job.get("image")]

        async def sign() -> dict[str, str]:
            assert rt.service is not None
            urls = await asyncio.gather(*(rt.service.image_url(g.job["image"]) for g in done))
            return {g.id: u for g, u in zip(done, urls, strict=True)}

        return rt.call(sign) if done else {}

    def to_canvas(self, name: str | None = None) -> Any:
        """A new Canvas with the gallery laid out: one prompt node per prompt, joined to one image node per
        generation (showing it), in a grid of prompts × generations."""
        from .canvas import Canvas

        canvas = Canvas(name=name or "Gallery")
        rows: dict[str, int] = {}
        columns: dict[str, int] = {}
        nodes: list[dict[str, Any]] = []
        edges: list[dict[str, Any]] = []
        for g in self._items:
            if g.prompt not in rows:
                rows[g.prompt] = len(rows)
                nodes.append(
                    {
                        "id": f"p{rows[g.prompt]}",
                        "type": "prompt",
                        "position_x": 0.0,
                        "position_y": rows[g.prompt] * ROW_SPACING,
                        "data": {"text": g.prompt, "style_modifiers": []},
                    }
                )
            row = rows[g.prompt]
            col = columns.get(g.prompt, 0)
            columns[g.prompt] = col + 1
            node_id = f"i{row}-{col}"
            nodes.append(
                {
                    "id": node_id,
                    "type": "image",
                    "position_x": 340.0 + col * COLUMN_SPACING,
                    "position_y": row * ROW_SPACING,
                    "data": {
                        "prompt": "",
                        "provider": g.provider,
                        "model": g.model,
                        "seed": g.seed,
                        "seed_locked": g.seed is not None,
                        "variants": 1,
                        **{
                            k: v
                            for k, v in g.spec.items()
                            if k in ("size", "aspect_ratio", "quality", "negative_prompt")
                        },
                        "current_job_id": g.id,
                    },
                }
            )
            edges.append({"id": f"e{row}-{col}", "source": f"p{row}", "target": node_id})

        def lay_out(c: dict[str, Any]) -> None:
            c["nodes"], c["edges"] = nodes, edges

        canvas._change(lay_out)
        return canvas

    def _repr_html_(self) -> str:
        rt = runtime()
        done = [g for g in self._items if g.status == "done"]

        async def thumbs() -> list[bytes]:
            assert rt.service is not None
            return [
                r[1]
                for r in await asyncio.gather(
                    *(rt.service.image_content(rt.owner, g.job["image_id"], "thumbnail") for g in done)
                )
            ]

        images = dict(zip((g.id for g in done), rt.call(thumbs) if done else [], strict=True))
        cells = []
        for g in self._items:
            label = html.escape(
                f"{g.prompt[:60]} · seed {g.seed if g.seed is not None else '–'} · {g.provider}/{g.model}"
            )
            if g.id in images:
                body = (
                    f'<img src="{_data_uri(images[g.id], "image/webp")}" alt="{html.escape(g.prompt)}" '
                    'style="width:100%;height:auto;display:block"/>'
                )
            else:
                body = (
                    f'<div style="aspect-ratio:1;display:flex;align-items:center;justify-content:center;'
                    f'background:var(--jp-layout-color2,#eee)"><b>{html.escape(g.status)}</b></div>'
                )
                if g.error:
                    label += (
                        f"<br><span style='color:var(--jp-error-color1,#c62828)'>{html.escape(g.error[:120])}</span>"
                    )
            cells.append(
                f'<figure style="margin:0"><div>{body}</div>'
                f'<figcaption style="font-size:11px;line-height:1.3">{label}</figcaption></figure>'
            )
        summary = ", ".join(
            f"{n} {s}"
            for s, n in sorted(
                (s, sum(1 for g in self._items if g.status == s)) for s in {g.status for g in self._items}
            )
        )
        return (
            f'<div class="imagen-gallery"><div style="font-size:12px;margin-bottom:4px">'
            f"{len(self._items)} generations: {html.escape(summary)}</div>"
            '<div style="display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:8px">'
            f"{''.join(cells)}</div></div>"
        )

    def __repr__(self) -> str:
        return f"<Gallery of {len(self._items)}>"


# -- submitting and waiting ----------------------------------------------------------------------


async def _fetch(rt: Runtime, job_ids: list[str], group_id: str | None) -> dict[str, dict[str, Any]]:
    """The jobs as they are now: a group's in pages of 500, else one by one."""
    assert rt.service is not None
    if group_id is None:
        return {j: await rt.service.get_job(rt.owner, j) for j in job_ids}
    out: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        query = {"group_id": group_id, "limit": "500", **({"cursor": cursor} if cursor else {})}
        page = await rt.service.list_jobs(rt.owner, query)
        out.update((j["id"], j) for j in page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            return out


async def _wait_all(
    rt: Runtime,
    job_ids: list[str],
    on_finish: Callable[[dict[str, Any]], None] | None,
    group_id: str | None = None,
) -> list[dict[str, Any]]:
    """Wait until every job is terminal; the final jobs, in order. `on_finish` sees each as it ends."""
    assert rt.service is not None and rt.feed is not None
    feed = rt.feed
    wanted = set(job_ids)
    since: Cursor | None = None
    sub = await feed.subscribe(rt.owner)
    try:
        # Those that ended before we listened.
        for job in (await _fetch(rt, job_ids, group_id)).values():
            if job["status"] in TERMINAL and job["id"] in wanted:
                wanted.discard(job["id"])
                if on_finish is not None:
                    on_finish(job)
        while wanted:
            try:
                message = await sub.get()
            except StreamClosed:
                feed.unsubscribe(sub)
                sub = await feed.subscribe(rt.owner, since)
                continue
            if message.get("cursor"):
                since = Cursor.decode(message["cursor"])
            job_id = message.get("job_id")
            if job_id in wanted and message.get("kind") == "state" and message.get("status") in TERMINAL:
                wanted.discard(job_id)
                if on_finish is not None:
                    on_finish({"id": job_id, "status": message["status"]})
    finally:
        feed.unsubscribe(sub)
    final = await _fetch(rt, job_ids, group_id)
    return [final[j] for j in job_ids]


def _run_sync(
    rt: Runtime,
    make: Callable[[], Any],
    job_ids: Callable[[], list[str]],
    tick: Callable[[], None] | None = None,
    notices: Notices | None = None,
) -> Any:
    """Run `make()` on the runtime and wait, staying interruptible and showing the runtime's notices as
    they come; on Ctrl-C (or the stop button) cancel the jobs submitted so far and say so."""
    future = rt.submit(make)
    try:
        while True:
            try:
                return future.result(timeout=0.1)
            except concurrent.futures.TimeoutError:
                if notices is not None:
                    notices.show()
                if tick is not None:
                    tick()
    except KeyboardInterrupt:
        future.cancel()
        ids = job_ids()

        async def cancel() -> list[str]:
            assert rt.service is not None
            return await rt.service.cancel_jobs(rt.owner, ids) if ids else []

        cancelled = rt.call(cancel, timeout=60)
        print(
            f"interrupted: cancelled {len(cancelled)} of the {len(ids)} jobs submitted "
            f"({len(ids) - len(cancelled)} had already finished)",
            file=sys.stderr,
        )
        raise
    finally:
        if notices is not None:
            notices.show()


def _body(prompt: str, provider: str | None, spec: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": prompt, **({"provider": provider} if provider else {}), **spec}


def generate(prompt: str, provider: str | None = None, **spec: Any) -> Generation:
    """Queue one image (interactive priority), wait for it, return it. `spec`: model, size,
    aspect_ratio, quality, seed, negative_prompt, style_modifiers, previous_image_id, options."""
    rt = runtime()
    submitted: list[str] = []
    notices = Notices()

    async def go() -> dict[str, Any]:
        assert rt.service is not None
        body = _body(prompt, provider, spec)
        await rt.ensure_worker(body.get("provider"), notices.said)
        job = await rt.service.create_job(rt.owner, body, default_priority=INTERACTIVE)
        submitted.append(job["id"])
        return (await _wait_all(rt, [job["id"]], None))[0]

    return Generation(_run_sync(rt, go, lambda: submitted, notices=notices), rt)


async def agenerate(prompt: str, provider: str | None = None, **spec: Any) -> Generation:
    """`generate` for async code; cancelling the awaiting task cancels the job."""
    rt = runtime()
    submitted: list[str] = []
    notices = Notices()

    async def queue() -> str:
        assert rt.service is not None
        body = _body(prompt, provider, spec)
        await rt.ensure_worker(body.get("provider"), notices.said)
        job = await rt.service.create_job(rt.owner, body, default_priority=INTERACTIVE)
        submitted.append(job["id"])
        return str(job["id"])

    try:
        job_id = await rt.acall(queue)
        notices.show()
        return Generation((await rt.acall(lambda: _wait_all(rt, [job_id], None)))[0], rt)
    except asyncio.CancelledError:
        if submitted:

            async def cancel() -> list[str]:
                assert rt.service is not None
                return await rt.service.cancel_jobs(rt.owner, submitted)

            await asyncio.shield(rt.acall(cancel))
        raise


def sweep(
    prompts: str | Sequence[str],
    seeds: Sequence[int | None] | int | None = None,
    providers: Sequence[str] | str | None = None,
    *,
    progress: bool = True,
    **spec: Any,
) -> Gallery:
    """Queue the whole grid prompts × seeds × providers at once (batch priority, so interactive work
    such as a canvas click runs first), show a progress bar, and return the Gallery in grid order.
    `seeds` may be a count (seeds 0..n-1)."""
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    seed_list: list[int | None] = list(range(seeds)) if isinstance(seeds, int) else list(seeds or [None])
    provider_list: list[str | None] = (
        [providers] if isinstance(providers, str) else (list(providers) if providers else [None])
    )
    if not prompt_list:
        raise InvalidField("prompts: give at least one prompt", field="prompts")
    group_id = str(uuid.uuid4())
    rt = runtime()
    bodies = []
    samples: list[int | None] = []
    for prompt, seed, provider in itertools.product(prompt_list, seed_list, provider_list):
        body = _body(prompt, provider, {**spec, "group_id": group_id})
        samples.append(None)
        if seed is not None:
            if _takes_seed(rt, body.get("provider"), body.get("model")):
                body["seed"] = seed
            else:
                # The model takes no seed: each seed of the grid is an unseeded sample instead.
                samples[-1] = seed_list.index(seed) + 1
        bodies.append(body)
    submitted: list[str] = []
    finished: list[dict[str, Any]] = []

    notices = Notices()

    async def go() -> list[dict[str, Any]]:
        assert rt.service is not None
        for name in {b.get("provider") for b in bodies}:
            await rt.ensure_worker(name, notices.said)
        jobs = await rt.service.create_jobs(rt.owner, bodies, default_priority=BATCH)
        submitted.extend(j["id"] for j in jobs)
        return await _wait_all(rt, submitted, finished.append, group_id)

    bar = _progress_bar(len(bodies)) if progress else None

    def tick() -> None:
        if bar is not None and bar.n != len(finished):
            failed = sum(1 for j in finished if j["status"] != "done")
            bar.set_postfix_str(f"{failed} failed" if failed else "", refresh=False)
            bar.update(len(finished) - bar.n)

    try:
        jobs = _run_sync(rt, go, lambda: submitted, tick, notices)
        tick()
    finally:
        if bar is not None:
            bar.close()
    return Gallery(Generation(j, rt, sample=s) for j, s in zip(jobs, samples, strict=True))


def _takes_seed(rt: Runtime, provider: str | None, model: str | None) -> bool:
    from imagen_worker.errors import SpecError
    from imagen_worker.providers import ProviderRegistry
    from imagen_worker.service import ServiceConfig

    try:
        found = ProviderRegistry().get(
            provider or rt.settings.default_provider or ServiceConfig.from_env().default_provider
        )
        return found.capabilities(model or found.default_model).seed
    except SpecError:
        return True  # the service names the bad provider or model when the job is queued


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep", unit="job")


def compare(prompt: str, providers: Sequence[str], **spec: Any) -> Gallery:
    """One prompt on several providers, side by side (a sweep of one prompt, queued at interactive
    priority: it is one person's question, not a batch)."""
    return sweep([prompt], providers=list(providers), **{"priority": INTERACTIVE, **spec})


def history(limit: int = 50, **filters: Any) -> Gallery:
    """Past generations, newest first: filters status, provider, canvas_id, node_id, group_id."""
    rt = runtime()
    query = {k: str(v) for k, v in filters.items() if v is not None}

    async def go() -> list[dict[str, Any]]:
        assert rt.service is not None
        return await rt.service.recent_jobs(rt.owner, query, limit)

    return Gallery(Generation(j, rt) for j in rt.call(go))
