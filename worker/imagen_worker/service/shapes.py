"""The one JSON shape of each object (docs/api.md), built from rows: SQL column names as field names."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

# Job columns that are the queue's own bookkeeping, not the job's story.
_JOB_PRIVATE = ("locked_by", "lease_expires_at", "provider_job_id")
TERMINAL = ("done", "failed", "cancelled")


class Message(dict[str, Any]):
    """A stream message: a dict that keeps its JSON text once made, so a fan-out to many sockets
    serialises each message once."""

    __slots__ = ("_text",)

    def json_text(self) -> str:
        try:
            return self._text
        except AttributeError:
            self._text: str = json.dumps(self)
            return self._text


def plain(value: Any) -> Any:
    """A value as JSON has it: UUIDs and times as strings, decimals as numbers."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def job_json(
    row: dict[str, Any],
    *,
    image: dict[str, Any] | None = None,
    progress: float | None = None,
    waiting_for_worker: str | None = None,
) -> dict[str, Any]:
    out = {k: plain(v) for k, v in row.items() if k not in _JOB_PRIVATE}
    out["progress"] = progress if out.get("status") == "running" else (1.0 if out.get("status") == "done" else None)
    out["waiting_for_worker"] = waiting_for_worker if out.get("status") == "pending" else None
    out["image"] = image
    return out


def image_json(
    row: dict[str, Any], *, url: str | None, thumbnail_url: str | None, expires_at: datetime | None
) -> dict[str, Any]:
    out = {k: plain(v) for k, v in row.items()}
    out["url"] = url
    out["thumbnail_url"] = thumbnail_url
    out["expires_at"] = plain(expires_at)
    return out


def event_json(row: dict[str, Any], cursor: str | None = None) -> Message:
    """An event row (id, job_id, kind, payload, ts, canvas_id, node_id) as the stream sends it."""
    payload = row.get("payload") or {}
    kind = row["kind"]
    status = payload.get("status") or ("running" if kind == "progress" else None)
    out = Message(
        {
            "event_id": row["id"],
            "job_id": plain(row["job_id"]),
            "canvas_id": plain(row.get("canvas_id")),
            "node_id": row.get("node_id"),
            "kind": kind,
            "status": status,
            "progress": payload.get("progress"),
            "message": payload.get("message"),
            "error": payload.get("error"),
            "image_id": payload.get("image_id"),
            "ts": plain(row["ts"]),
        }
    )
    if cursor is not None:
        out["cursor"] = cursor
    return out


def worker_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: plain(v) for k, v in row.items()}


def canvas_json(canvas: dict[str, Any], nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> dict[str, Any]:
    out = {k: plain(v) for k, v in canvas.items()}
    out["nodes"] = nodes
    out["edges"] = edges
    return out
