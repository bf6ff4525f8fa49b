"""Named SQL queries, read from the package's .sql files (`-- name: x` starts a query)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a .sql file into {name: statement}; comments before the first name are the file's header."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


@cache
def queries(filename: str = "queries.sql") -> dict[str, str]:
    return parse_queries(resources.files("imagen_worker.sql").joinpath(filename).read_text("utf-8"))


def q(name: str) -> str:
    """The named query from sql/queries.sql."""
    return queries()[name]
