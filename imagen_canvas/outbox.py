"""Messages for a canvas's views, held until a view says `ready` (docs/architecture.md, Ready handshake).

Nothing sent before a view exists is lost, and the outbox stays small however long no view comes: a
message that a later one makes redundant is replaced by it, and the survivors keep the order in
which they were last sent. Redundant means: an earlier event of the same kind of the same job (the
latest `state`, `progress` and `waiting` of each job are kept), an earlier `canvas` save of the same
canvas, an earlier worker set, `hello` or `reset`, the same notice again. A view applies a job's
events in order and fetches every job it did not know (and every job that finished), so the latest
state of a job tells it all an earlier one would have. Messages with no such key (responses never
wait here; an unknown message) are all kept. Only beyond `limit` distinct entries (10,000 by
default: a sweep of that many jobs into one canvas before any view of it exists) are the oldest
dropped, with a warning naming how many of which kind.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable
from typing import Any

log = logging.getLogger("imagen.canvas")

LIMIT = 10_000


def coalesce_key(message: dict[str, Any]) -> Hashable | None:
    """The key under which a later message replaces an earlier one, or None (every one is kept)."""
    if message.get("type") != "event" or not isinstance(message.get("event"), dict):
        return None
    event = message["event"]
    kind = event.get("kind")
    if kind in ("state", "progress", "waiting") and event.get("job_id"):
        return (kind, str(event["job_id"]))
    if kind == "canvas":
        return ("canvas", str(event.get("canvas_id")))
    if kind in ("workers", "hello", "reset"):
        return (kind,)
    if kind == "notice":
        return ("notice", str(event.get("message")))
    return None


def _kind(message: dict[str, Any]) -> str:
    event = message.get("event")
    if isinstance(event, dict) and event.get("kind"):
        return str(event["kind"])
    return str(message.get("type") or "message")


class Outbox:
    """Held messages with their buffers, coalesced (see the module docstring)."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._entries: dict[Hashable, tuple[dict[str, Any], list[bytes]]] = {}
        self._seq = 0
        self.dropped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, message: dict[str, Any], buffers: list[bytes] | None = None) -> None:
        key = coalesce_key(message)
        if key is None:
            key = ("#", self._seq)
            self._seq += 1
        self._entries.pop(key, None)  # a replaced message moves to where its latest copy was sent
        self._entries[key] = (message, list(buffers or []))
        while len(self._entries) > self.limit:
            oldest = next(iter(self._entries))
            dropped, _ = self._entries.pop(oldest)
            if not self.dropped:
                log.warning(
                    "imagen canvas: more than %d messages are waiting for a view of this canvas; dropping the "
                    "oldest (the first a %r message); a view reloads its canvas and jobs when it starts",
                    self.limit,
                    _kind(dropped),
                )
            self.dropped[_kind(dropped)] += 1

    def drain(self) -> list[tuple[dict[str, Any], list[bytes]]]:
        """Every held message, oldest first; the outbox is empty afterwards."""
        out = list(self._entries.values())
        self._entries.clear()
        if self.dropped:
            kinds = ", ".join(f"{n} {kind}" for kind, n in self.dropped.most_common())
            log.warning(
                "imagen canvas: %d messages for views were dropped before one was ready: %s",
                self.dropped.total(),
                kinds,
            )
            self.dropped.clear()
        return out
