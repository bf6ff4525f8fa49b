"""Which environment variables make a provider available, and the reason it gives when none is set."""

from __future__ import annotations

import pytest

from imagen_worker.providers import ProviderRegistry


@pytest.mark.parametrize("name", ["GOOGLE_API_KEY", "GEMINI_API_KEY"])
def test_google_takes_either_api_key_variable(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    assert "GOOGLE_API_KEY" in (ProviderRegistry().unavailable_reason("google") or "")
    monkeypatch.setenv(name, "AIza-test-key-0123456789abcdef")
    assert ProviderRegistry().unavailable_reason("google") is None


@pytest.mark.parametrize(
    ("provider", "variable"),
    [
        ("openai", "OPENAI_API_KEY"),
        ("stability", "STABILITY_API_KEY"),
        ("replicate", "REPLICATE_API_TOKEN"),
        ("midjourney", "MIDJOURNEY_BASE_URL"),
    ],
)
def test_a_provider_without_its_key_says_which_variable_to_set(
    provider: str, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(variable, raising=False)
    reason = ProviderRegistry().unavailable_reason(provider)
    assert reason is not None and reason.startswith(f"{variable} is not set")
    monkeypatch.setenv(variable, "https://proxy.example" if variable.endswith("URL") else "k" * 24)
    assert ProviderRegistry().unavailable_reason(provider) is None
