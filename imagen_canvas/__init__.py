"""imagen-canvas: the notebook side (canvas widget and notebook API) over imagen-worker's queue."""

from __future__ import annotations

from imagen_worker import ImagePromptSpec, local_owner_id

from .canvas import Canvas, canvases
from .notebook import Gallery, Generation, JobFailed, agenerate, compare, generate, history, sweep
from .runtime import configure

__version__ = "0.1.0"

__all__ = [
    "Canvas",
    "Gallery",
    "Generation",
    "ImagePromptSpec",
    "JobFailed",
    "__version__",
    "agenerate",
    "canvases",
    "compare",
    "configure",
    "generate",
    "history",
    "local_owner_id",
    "sweep",
]
