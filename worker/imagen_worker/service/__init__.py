"""The service layer: every operation a user can ask for, once (docs/api.md).

`Service` runs the operations on behalf of an owner under row-level security; `Router` is the route
table the REST handlers and the kernel transport share; `EventFeed` fans the owners' events out to
websockets, kernel views and notebook waits, resumable by `Cursor`. No Jupyter import here.
"""

from __future__ import annotations

from .core import OWNER_ROLE, Service, ServiceConfig, as_owner
from .cursor import Cursor, Snapshot
from .feed import EventFeed, StreamClosed, Subscription
from .router import Request, Response, Router

__all__ = [
    "OWNER_ROLE",
    "Cursor",
    "EventFeed",
    "Request",
    "Response",
    "Router",
    "Service",
    "ServiceConfig",
    "Snapshot",
    "StreamClosed",
    "Subscription",
    "as_owner",
]
