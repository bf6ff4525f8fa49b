"""A scan of every text, varchar and json(b) column of the imagen schema for base64 image data.

The database refuses inline images in the columns it guards (migration 0002); this scan is the
suite-wide check that nothing found another way in. It looks for `data:image/` URLs, the base64
signatures of image formats, and long base64 runs that look like binary data. conftest.py's
`db_url` fixture runs `assert_no_base64_images` on every test database before dropping it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg

# Patterns valid in both Python and Postgres regular expressions (hence no inline flags).
# The base64 openings of PNG, JPEG (JFIF, Exif, bare DQT), GIF, RIFF/WebP, AVIF, HEIC and SVG.
SIGNATURES = {
    "data: URL": r"[Dd][Aa][Tt][Aa]:[Ii][Mm][Aa][Gg][Ee]/",
    "PNG": r"iVBORw0KGgo",
    "JPEG": r"/9j/4AAQ|/9j/4QA|/9j/2wBD",
    "GIF": r"R0lGOD",
    "WebP/RIFF": r"UklGR",
    "AVIF": r"GZ0eXBhdmlm",
    "HEIC": r"GZ0eXBoZWlj",
    "SVG": r"PHN2Zy|PD94bWwg",
}
# A run this long of base64 characters is a candidate; it counts when it also looks like encoded
# binary (mixed case, digits, many distinct characters), which hex digests, UUIDs and words do not.
LONG_RUN = 200  # Postgres caps a {m,n} bound at 255
MIN_DISTINCT = 32

_SIGNATURE_RE = re.compile("|".join(f"(?P<g{i}>{p})" for i, p in enumerate(SIGNATURES.values())))
_SIGNATURE_NAMES = list(SIGNATURES)
_RUN_RE = re.compile(rf"[A-Za-z0-9+/_-]{{{LONG_RUN},}}={{0,2}}")
# The SQL pre-filter: any signature, or any long run (then judged in Python).
_SQL_PATTERN = "(" + "|".join(SIGNATURES.values()) + rf")|[A-Za-z0-9+/_-]{{{LONG_RUN}}}"

_COLUMNS = """
select c.table_name, c.column_name
  from information_schema.columns c
  join information_schema.tables t
    on t.table_schema = c.table_schema and t.table_name = c.table_name
 where c.table_schema = 'imagen'
   and t.table_type = 'BASE TABLE'
   and c.udt_name in ('text', 'varchar', 'bpchar', 'json', 'jsonb', '_text', '_varchar', '_json', '_jsonb')
 order by c.table_name, c.ordinal_position
"""


@dataclass(frozen=True)
class Finding:
    """Image data in one column of one row: where, what kind, and an excerpt around it."""

    table: str
    column: str
    row: str
    kind: str
    excerpt: str

    def __str__(self) -> str:
        return f"imagen.{self.table}.{self.column} row {self.row}: {self.kind} near {self.excerpt!r}"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def find_image_data(text: str) -> tuple[str, int] | None:
    """(kind, offset) of the first image data in `text`, or None."""
    match = _SIGNATURE_RE.search(text)
    if match is not None and match.lastgroup is not None:
        return _SIGNATURE_NAMES[int(match.lastgroup[1:])], match.start()
    for run in _RUN_RE.finditer(text):
        value = run.group()
        if (
            len(set(value)) >= MIN_DISTINCT
            and any(ch.isupper() for ch in value)
            and any(ch.islower() for ch in value)
            and any(ch.isdigit() for ch in value)
        ):
            return f"base64 run of {len(value)} characters", run.start()
    return None


async def scan_for_base64_images(conn: asyncpg.Connection) -> list[Finding]:
    """Every row of every text-like column of schema imagen holding image data, in one query."""
    columns = await conn.fetch(_COLUMNS)
    if not columns:
        return []
    selects = [
        f"select {i} as col, ctid::text as row, {_quote(c['column_name'])}::text as value "
        f"from imagen.{_quote(c['table_name'])} where {_quote(c['column_name'])}::text ~ $1"
        for i, c in enumerate(columns)
    ]
    findings: list[Finding] = []
    for r in await conn.fetch(" union all ".join(selects), _SQL_PATTERN):
        hit = find_image_data(r["value"])
        if hit is None:
            continue
        kind, at = hit
        column = columns[r["col"]]
        excerpt = r["value"][max(0, at - 20) : at + 60]
        findings.append(Finding(column["table_name"], column["column_name"], r["row"], kind, excerpt))
    return findings


async def assert_no_base64_images(url: str, *, kept: bool = True) -> None:
    """Fail, naming each place, when the database at `url` holds image data. `kept`: the caller then
    keeps the database for inspection (a private server deleted with its test says False)."""
    conn = await asyncpg.connect(url)
    try:
        findings = await scan_for_base64_images(conn)
        database = await conn.fetchval("select current_database()")
    finally:
        await conn.close()
    if findings:
        lines = "\n  ".join(str(f) for f in findings[:20])
        fate = f"kept for inspection; drop it with `dropdb {database}`" if kept else "deleted with the test's server"
        raise AssertionError(
            f"{len(findings)} value(s) of base64 image data in database {database} ({fate}):\n  {lines}"
        )
