"""What a canvas holds for its views until one says `ready` (imagen_canvas.outbox): everything a view
needs, coalesced, and a warning naming what was dropped only past a large bound."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from imagen_canvas.outbox import Outbox


def event(**fields: Any) -> dict[str, Any]:
    return {"type": "event", "event": fields}


def test_a_later_message_of_the_same_kind_replaces_an_earlier_one_keeping_send_order() -> None:
    box = Outbox()
    box.put(event(kind="hello", cursor="c0"))
    box.put(event(kind="state", job_id="a", status="pending"))
    box.put(event(kind="state", job_id="b", status="pending"))
    box.put(event(kind="state", job_id="a", status="running"))
    box.put(event(kind="progress", job_id="a", progress=0.5))
    box.put(event(kind="canvas", canvas_id="c", version=1))
    box.put(event(kind="notice", message="started a worker"))
    box.put(event(kind="state", job_id="a", status="done"))
    box.put(event(kind="canvas", canvas_id="c", version=2))
    box.put(event(kind="notice", message="started a worker"))
    box.put(event(kind="workers", workers=[1]))
    box.put(event(kind="workers", workers=[1, 2]))
    box.put(event(kind="waiting", job_id="b", message="no worker"))
    sent = [m["event"] for m, _ in box.drain()]
    assert sent == [
        {"kind": "hello", "cursor": "c0"},
        {"kind": "state", "job_id": "b", "status": "pending"},
        {"kind": "progress", "job_id": "a", "progress": 0.5},
        {"kind": "state", "job_id": "a", "status": "done"},
        {"kind": "canvas", "canvas_id": "c", "version": 2},
        {"kind": "notice", "message": "started a worker"},
        {"kind": "workers", "workers": [1, 2]},
        {"kind": "waiting", "job_id": "b", "message": "no worker"},
    ]
    assert len(box) == 0 and box.drain() == []


def test_messages_with_no_kind_to_coalesce_by_are_all_kept_with_their_buffers() -> None:
    box = Outbox()
    box.put({"type": "custom", "n": 1}, [b"x"])
    box.put({"type": "custom", "n": 1})
    box.put(event(kind="something-new"))
    box.put(event(kind="notice", message="one"))
    box.put(event(kind="notice", message="two"))
    assert box.drain() == [
        ({"type": "custom", "n": 1}, [b"x"]),
        ({"type": "custom", "n": 1}, []),
        (event(kind="something-new"), []),
        (event(kind="notice", message="one"), []),
        (event(kind="notice", message="two"), []),
    ]


def test_past_the_bound_the_oldest_go_with_a_warning_naming_how_many_of_which_kind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    box = Outbox(limit=3)
    for i in range(5):
        box.put(event(kind="state", job_id=f"j{i}", status="done"))
    box.put(event(kind="notice", message="hi"))
    assert len(box) == 3
    with caplog.at_level(logging.WARNING, logger="imagen.canvas"):
        kept = [m["event"].get("job_id") for m, _ in box.drain()]
    assert kept == ["j3", "j4", None]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("3 messages for views were dropped" in w and "3 state" in w for w in warnings), warnings
