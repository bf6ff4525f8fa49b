"""The provider registry: `provider` name → Provider, each with its models' capability table."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import SpecError
from .base import Capabilities, GeneratedImage, GenerationRequest, Provider, ProviderResult
from .local import LocalProvider

_FACTORIES: dict[str, Callable[[], Provider]] = {"local": LocalProvider}


def register(name: str, factory: Callable[[], Provider]) -> None:
    _FACTORIES[name] = factory


def provider_names() -> list[str]:
    return sorted(_FACTORIES)


class ProviderRegistry:
    """Instantiates providers on first use and keeps them (they hold HTTP clients)."""

    def __init__(self, factories: dict[str, Callable[[], Provider]] | None = None) -> None:
        self._factories = dict(factories if factories is not None else _FACTORIES)
        self._instances: dict[str, Provider] = {}

    def get(self, name: str) -> Provider:
        if name not in self._instances:
            factory = self._factories.get(name)
            if factory is None:
                raise SpecError(
                    f"provider: {name!r} is not a provider; the providers are {', '.join(sorted(self._factories))}"
                )
            self._instances[name] = factory()
        return self._instances[name]

    def names(self) -> list[str]:
        return sorted(self._factories)


__all__ = [
    "Capabilities",
    "GeneratedImage",
    "GenerationRequest",
    "Provider",
    "ProviderRegistry",
    "ProviderResult",
    "provider_names",
    "register",
]
