"""Every code block of docs/ and of README.md is run (or parsed) here, so the docs cannot rot.

Each fence names its language. `sh` and `bash` blocks run in bash (errexit, pipefail) and `sql`
blocks through psql, against a fresh database with an `imagen worker` running beside them;
`python` blocks run in a fresh interpreter against the same database; `json` and `yaml` blocks must
parse; `text` blocks are output samples and are only read. A block whose paragraph right above starts
with **Needs …:** (a key, a Supabase project, systemd), or that is preceded by an HTML comment
`<!-- Needs …: -->` (where a visible note would be in the way, as at the top of the README), cannot
run here and is skipped, with that reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import IMAGEN, REPO, _create_database, _drop_database, run_sync, url_for

DOCS = REPO / "docs"
README = REPO / "README.md"
LANGUAGES = {"sh", "bash", "sql", "python", "json", "yaml", "text"}
_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    code: str
    needs: str | None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks() -> list[Block]:
    out = []
    for path in [*sorted(DOCS.rglob("*.md")), README]:
        text = path.read_text()
        for match in _FENCE.finditer(text):
            before = text[: match.start()].rstrip().rsplit("\n\n", 1)[-1].strip()
            needs = re.match(r"\*\*(Needs [^*:]+):?\*\*", before) or re.search(
                r"<!--\s*(Needs [^:>]+)[^>]*-->$", before
            )
            out.append(
                Block(
                    path,
                    text[: match.start()].count("\n") + 1,
                    match.group(1),
                    match.group(2),
                    needs.group(1) if needs else None,
                )
            )
    return out


BLOCKS = blocks()


def test_the_python_blocks_of_the_docs_and_the_readme_are_run_not_skipped() -> None:
    """The README's tour and the docs' Python examples are executed below (not merely parsed or marked)."""
    run = {b.path for b in BLOCKS if b.language == "python" and not b.needs}
    assert README in run, "README.md's python block is not run"
    assert run - {README}, "no python block of docs/ is run"


def test_every_fence_names_its_language() -> None:
    unnamed = [b.id for b in BLOCKS if b.language not in LANGUAGES]
    assert not unnamed, f"fences without a known language ({', '.join(sorted(LANGUAGES))}): {unnamed}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language in ("json", "yaml")], ids=lambda b: b.id)
def test_data_blocks_parse(block: Block) -> None:
    if block.language == "json":
        json.loads(block.code)
    else:
        import yaml

        yaml.safe_load(block.code)


@pytest.fixture(scope="module")
def docs_env(pg_admin_url: str, template_db: str) -> Iterator[dict[str, str]]:
    """A fresh database, a data folder and a running `imagen worker`, for the commands of the docs."""
    name = f"imagen_docs_{uuid.uuid4().hex[:10]}"
    run_sync(lambda: _create_database(pg_admin_url, name, template_db))
    root = Path(tempfile.mkdtemp(prefix="imagen-docs-"))
    env = {
        **os.environ,
        "IMAGEN_DATABASE_URL": url_for(pg_admin_url, name),
        "IMAGEN_DATA_DIR": str(root / "data"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("OPENAI_API_KEY", "GOOGLE_API_KEY", "STABILITY_API_KEY", "REPLICATE_API_TOKEN"):
        env.pop(key, None)
    worker = subprocess.Popen(
        [*IMAGEN, "worker", "--poll-interval", "0.2"],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env["DOCS_WORKDIR"] = str(root)
    try:
        yield env
    finally:
        worker.terminate()
        worker.wait(30)
        run_sync(lambda: _drop_database(pg_admin_url, name))
        shutil.rmtree(root, ignore_errors=True)


RUNNABLE = [b for b in BLOCKS if b.language in ("sh", "bash", "sql", "python")]


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_code_blocks_run(block: Block, docs_env: dict[str, str]) -> None:
    if block.needs:
        pytest.skip(f"{block.needs} (marked in the docs)")
    if block.language in ("sh", "bash"):
        command = ["bash", "-euo", "pipefail", "-c", block.code]
    elif block.language == "sql":
        command = ["psql", docs_env["IMAGEN_DATABASE_URL"], "-v", "ON_ERROR_STOP=1", "-c", block.code]
    else:
        command = [sys.executable, "-c", block.code]
    done = subprocess.run(
        command, env=docs_env, cwd=docs_env["DOCS_WORKDIR"], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"{block.id} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr
