"""imagen-canvas: the notebook side (canvas widget and notebook API) over imagen-worker's queue."""

from __future__ import annotations

from imagen_worker import ImagePromptSpec, local_owner_id

from .canvas import Canvas, canvases
from .runtime import configure

__version__ = "0.1.0"

__all__ = ["Canvas", "ImagePromptSpec", "__version__", "canvases", "configure", "local_owner_id"]
