"""imagen-canvas-server: the Jupyter server extension (REST, websocket, in-process worker)."""

from __future__ import annotations

from typing import Any

from .app import ImagenCanvasApp

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "imagen_canvas_server", "app": ImagenCanvasApp}]


__all__ = ["ImagenCanvasApp", "__version__"]
