"""docs/configuration.md's one table names every setting the code reads from the environment."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "worker" / "imagen_worker", ROOT / "server_ext" / "imagen_canvas_server", ROOT / "imagen_canvas"]
NAME = re.compile(r"[\"']((?:IMAGEN|SUPABASE|OPENAI|GOOGLE|GEMINI|STABILITY|REPLICATE|MIDJOURNEY)_[A-Z0-9_]+)[\"']")
# Read only to scrub their values from messages (imagen_worker.redact), never as a setting.
SCRUBBED_ONLY = {"redact.py"}


def test_every_environment_variable_the_code_names_is_in_the_configuration_table() -> None:
    named: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in package.rglob("*.py"):
            for name in NAME.findall(path.read_text()):
                named.setdefault(name, set()).add(path.name)
    settings = {name for name, files in named.items() if files - SCRUBBED_ONLY}
    table = (ROOT / "docs" / "configuration.md").read_text()
    missing = sorted(name for name in settings if f"`{name}`" not in table and name not in table)
    assert settings, "no environment variable found: the pattern is wrong"
    assert not missing, f"not in docs/configuration.md: {missing}"
