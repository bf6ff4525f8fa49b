"""The provider registry: `provider` name → Provider, each with its models' capability table."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..errors import SpecError
from .base import Capabilities, GeneratedImage, GenerationRequest, Provider, ProviderResult
from .local import LocalProvider

# Remote providers are imported on first use, so a worker without an SDK installed still runs the others.
_LAZY = {
    "openai": "imagen_worker.providers.openai:OpenAIProvider",
    "google": "imagen_worker.providers.google:GoogleProvider",
    "stability": "imagen_worker.providers.stability:StabilityProvider",
    "replicate": "imagen_worker.providers.replicate:ReplicateProvider",
    "midjourney": "imagen_worker.providers.midjourney:MidjourneyProvider",
}


def _lazy(path: str) -> Callable[[], Provider]:
    def factory() -> Provider:
        module_name, _, attr = path.partition(":")
        name = module_name.rsplit(".", 1)[-1]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = exc.name or str(exc)
            raise SpecError(
                f"provider: {name!r} is not installed here (package {missing} is missing); "
                f"pip install 'imagen-worker[{name}]'"
            ) from None
        cls: Callable[[], Provider] = getattr(module, attr)
        return cls()

    return factory


_FACTORIES: dict[str, Callable[[], Provider]] = {"local": LocalProvider, **{k: _lazy(v) for k, v in _LAZY.items()}}


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

    def unavailable_reason(self, name: str) -> str | None:
        """Why provider `name` cannot run jobs in this process now (not installed, a key or endpoint
        unset), or None when it can."""
        try:
            provider = self.get(name)
        except SpecError as exc:
            return str(exc).removeprefix("provider: ")
        return provider.unavailable_reason()

    async def aclose(self) -> None:
        """Close every provider instantiated so far."""
        for provider in self._instances.values():
            await provider.aclose()
        self._instances.clear()


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
