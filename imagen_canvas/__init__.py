"""imagen-canvas: the notebook side (canvas widget and notebook API) over imagen-worker's queue."""

from __future__ import annotations

from imagen_worker import ImagePromptSpec, local_owner_id

__version__ = "0.1.0"

__all__ = ["ImagePromptSpec", "__version__", "local_owner_id"]
