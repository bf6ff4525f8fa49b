"""Priority classes, expressed in `imagen.jobs.priority` (lower runs first): interactive work (the
canvas, `generate()`, `imagen generate`) in 0–99, batch work (`sweep()`, `imagen submit --batch`)
in 100–199. Each transport queues at its class's default; a caller may set any priority in the
range, within a class or across."""

from __future__ import annotations

INTERACTIVE = 50
BATCH = 150
MIN_PRIORITY, MAX_PRIORITY = 0, 199


def priority_class(priority: int) -> str:
    return "interactive" if priority < 100 else "batch"
