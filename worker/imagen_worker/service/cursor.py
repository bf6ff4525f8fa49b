"""Event-stream cursors: positions in an owner's stream of job events that survive restarts.

Event ids come from a sequence taken before commit, so they are not in commit order: an event whose
id was taken first can commit after one with a higher id, and "everything after id N" would skip it.
A cursor instead names what has been seen by *snapshots* (docs/adr/0006-event-stream.md): every
event visible in the `base` snapshot, plus, for each `(snapshot, last_id)` term, the events visible
in that snapshot with an id up to `last_id`. Reading from a cursor returns every event visible now
that it has not seen, in id order; the cursor after one of those events adds a term. Snapshots are
Postgres's `pg_snapshot` (`xmin:xmax:xip,…`), whose transaction ids are 64-bit and never reused,
except after a crash that lost unflushed transactions: `clamp` forgets ids at or past the server's
next one, so their reuse is not mistaken for something seen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidField

MAX_TERMS = 8
_SNAPSHOT = re.compile(r"^(\d{1,20}):(\d{1,20}):((?:\d{1,20}(?:,\d{1,20})*)?)$")


@dataclass(frozen=True)
class Snapshot:
    """A Postgres snapshot: transactions below xmin are finished, those at or above xmax had not
    started, and those in xip were in progress."""

    xmin: int
    xmax: int
    xip: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        match = _SNAPSHOT.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not a snapshot (xmin:xmax:xip,...)")
        xmin, xmax = int(match.group(1)), int(match.group(2))
        xip = tuple(int(x) for x in match.group(3).split(",")) if match.group(3) else ()
        if xmin > xmax or any(not xmin <= x < xmax for x in xip):
            raise ValueError(f"{text!r} is not a consistent snapshot")
        return cls(xmin, xmax, xip)

    def text(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(str(x) for x in self.xip)}"

    def visible(self, xid: int) -> bool:
        """Whether a transaction committed as of this snapshot (the same rule as pg_visible_in_snapshot)."""
        return xid < self.xmin or (xid < self.xmax and xid not in self.xip)

    def clamp(self, next_xid: int) -> Snapshot:
        """This snapshot with every id at or past `next_xid` (the server's next transaction id) treated
        as not yet started."""
        if self.xmax <= next_xid:
            return self
        return Snapshot(min(self.xmin, next_xid), next_xid, tuple(x for x in self.xip if x < next_xid))


@dataclass(frozen=True)
class Cursor:
    """What a stream reader has seen: everything visible in `base`, plus, per term, what was visible in
    the term's snapshot up to its event id."""

    base: Snapshot
    terms: tuple[tuple[Snapshot, int], ...] = ()

    def encode(self) -> str:
        return self.base.text() + "".join(f"~{snap.text()}@{last_id}" for snap, last_id in self.terms)

    @classmethod
    def decode(cls, text: str, *, field: str = "since") -> Cursor:
        """Parse a cursor; a malformed one is an InvalidField naming `field`."""
        try:
            base_text, *rest = text.split("~")
            if len(rest) > MAX_TERMS:
                raise ValueError("too many terms")
            terms = []
            for part in rest:
                snap, at, last_id = part.partition("@")
                if not at or not last_id.isdigit():
                    raise ValueError(f"term {part!r} has no @event_id")
                terms.append((Snapshot.parse(snap), int(last_id)))
            return cls(Snapshot.parse(base_text), tuple(terms))
        except ValueError as exc:
            raise InvalidField(
                f"{field}: {text[:100]!r} is not an event cursor ({exc}); pass the `cursor` of the last event "
                "received (or of a `hello` message), or leave it out to start from now",
                field=field,
            ) from None

    def after(self, snapshot: Snapshot, event_id: int) -> Cursor:
        """The cursor once the event `event_id`, read at `snapshot` from this cursor, has been seen.
        Terms up to a smaller id are covered by the new one (a later snapshot sees at least as much)."""
        kept = tuple((snap, last) for snap, last in self.terms if last > event_id)
        return Cursor(self.base, (*kept, (snapshot, event_id))[-MAX_TERMS:])

    def clamp(self, next_xid: int) -> Cursor:
        return Cursor(self.base.clamp(next_xid), tuple((s.clamp(next_xid), i) for s, i in self.terms))

    @property
    def xmax(self) -> int:
        return max([self.base.xmax, *(s.xmax for s, _ in self.terms)])

    def query_args(self) -> tuple[str, list[str], list[int]]:
        """The cursor as the `events_after` statement takes it: base, term snapshots, term ids."""
        return self.base.text(), [s.text() for s, _ in self.terms], [i for _, i in self.terms]
