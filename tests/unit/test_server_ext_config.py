"""The server extension's traitlets: environment fallbacks, config over environment, and the table of
them in docs/configuration.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from traitlets.config import Config

from imagen_canvas_server import ImagenCanvasApp

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _app(**config: object) -> ImagenCanvasApp:
    c = Config()
    for name, value in config.items():
        setattr(c.ImagenCanvasApp, name, value)
    return ImagenCanvasApp(config=c)


# (traitlet, variable, the variable's value, the traitlet's value then, its default without either)
FALLBACKS = [
    ("worker_concurrency", "IMAGEN_WORKER_CONCURRENCY", "3", 3, 4),
    ("run_worker", "IMAGEN_SERVER_WORKER", "off", False, True),
    ("worker_scope", "IMAGEN_WORKER_SCOPE", "owner", "owner", "all"),
    ("poll_interval", "IMAGEN_POLL_INTERVAL", "0.25", 0.25, 5.0),
]


@pytest.mark.parametrize(("trait", "variable", "raw", "value", "default"), FALLBACKS, ids=[f[0] for f in FALLBACKS])
def test_a_traitlet_falls_back_to_its_environment_variable_and_config_wins_over_it(
    monkeypatch: pytest.MonkeyPatch, trait: str, variable: str, raw: str, value: object, default: object
) -> None:
    monkeypatch.delenv(variable, raising=False)
    assert getattr(_app(), trait) == default
    monkeypatch.setenv(variable, raw)
    assert getattr(_app(), trait) == value
    assert getattr(_app(**{trait: default}), trait) == default


def test_a_malformed_worker_concurrency_variable_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEN_WORKER_CONCURRENCY", "many")
    with pytest.raises(Exception, match="IMAGEN_WORKER_CONCURRENCY"):
        _ = _app().worker_concurrency


def _documented_traitlets() -> dict[str, str]:
    """traitlet -> its row (variable and default) in the one table of docs/configuration.md."""
    rows = re.findall(r"^\| ([^|]+) \| `([a-z_]+)` \| ([^|]+) \|", DOCS.read_text(), flags=re.MULTILINE)
    return {name: f"{variable.strip()} {default.strip()}" for variable, name, default in rows}


def test_the_configuration_table_lists_every_traitlet_and_its_environment_fallback() -> None:
    documented = _documented_traitlets()
    assert set(documented) == set(ImagenCanvasApp.class_own_traits(config=True))
    for trait, variable, *_ in FALLBACKS:
        assert variable in documented[trait], (trait, documented[trait])
    # and each help text names the same variable
    for trait, variable, *_ in FALLBACKS:
        assert variable in (ImagenCanvasApp.class_traits()[trait].help or ""), trait
