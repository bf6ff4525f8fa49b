"""Event-stream cursors: parsing, what they have seen, how they advance, and the crash clamp."""

from __future__ import annotations

import pytest

from imagen_worker.errors import InvalidField
from imagen_worker.service.cursor import Cursor, Snapshot


def test_a_snapshot_round_trips_and_sees_what_postgres_would() -> None:
    snap = Snapshot.parse("100:110:103,107")
    assert snap.text() == "100:110:103,107"
    assert snap.visible(99) and snap.visible(105)
    assert not snap.visible(103) and not snap.visible(107) and not snap.visible(110)
    assert Snapshot.parse("5:5:") == Snapshot(5, 5, ())


@pytest.mark.parametrize("text", ["", "1:2", "a:b:", "5:4:", "5:9:3", "5:9:9", "1:2:3:4"])
def test_a_malformed_snapshot_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Snapshot.parse(text)


def test_a_cursor_round_trips_through_its_text() -> None:
    cursor = Cursor(Snapshot(10, 12, (11,)), ((Snapshot(12, 15, ()), 40), (Snapshot(14, 16, (14,)), 33)))
    assert Cursor.decode(cursor.encode()) == cursor


@pytest.mark.parametrize("text", ["nope", "1:2:~", "1:2:~3:4:", "1:2:~3:4:@x", "1:2:" + "~3:4:@1" * 9])
def test_a_malformed_cursor_is_an_invalid_field_naming_since(text: str) -> None:
    with pytest.raises(InvalidField) as err:
        Cursor.decode(text)
    assert err.value.field == "since" and str(err.value).startswith("since:")


def test_after_keeps_only_terms_a_later_snapshot_does_not_cover() -> None:
    base = Cursor(Snapshot(10, 10))
    s1, s2 = Snapshot(10, 20), Snapshot(10, 30)
    first = base.after(s1, 50)
    assert first.terms == ((s1, 50),)
    # a smaller id from a later read keeps the earlier term (it saw more ids)
    second = first.after(s2, 45)
    assert second.terms == ((s1, 50), (s2, 45))
    # a larger id covers both
    assert second.after(s2, 60).terms == ((s2, 60),)


def test_clamp_forgets_transaction_ids_a_crash_gave_back() -> None:
    cursor = Cursor(Snapshot(100, 120, (105, 115)), ((Snapshot(110, 125, (118,)), 9),))
    clamped = cursor.clamp(112)
    assert clamped.base == Snapshot(100, 112, (105,))
    assert clamped.terms == ((Snapshot(110, 112, ()), 9),)
    assert not clamped.base.visible(113)  # a reused id is new again
    assert cursor.clamp(500) == cursor
