"""Image bytes in, facts out: the real format (sniffed, not trusted), size, sha256 and a WebP thumbnail."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageDataError

ACCEPTED = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
    "GIF": ("image/gif", "gif"),
}
MAX_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 64 * 1024 * 1024
THUMB_SIZE = 256


@dataclass(frozen=True)
class ProcessedImage:
    data: bytes
    content_type: str
    extension: str
    width: int
    height: int
    sha256: str
    thumbnail: bytes


def process_image(data: bytes, *, thumb_size: int = THUMB_SIZE) -> ProcessedImage:
    """Check that `data` is an accepted image within the caps, and make its thumbnail."""
    if not data:
        raise ImageDataError("the provider returned no image bytes")
    if len(data) > MAX_BYTES:
        raise ImageDataError(f"the image is {len(data)} bytes; the limit is {MAX_BYTES} bytes")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format or ""
            width, height = probe.size
            probe.verify()
    except Image.DecompressionBombError:
        # Pillow refuses, on the header alone, images far beyond its own pixel limit.
        raise ImageDataError(f"the image is too large to decode; the limit is {MAX_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageDataError(f"the provider returned bytes that are not an image ({exc.__class__.__name__})") from None
    if fmt not in ACCEPTED:
        raise ImageDataError(f"image format {fmt or 'unknown'} is not accepted; accepted: {', '.join(ACCEPTED)}")
    if width * height > MAX_PIXELS:
        raise ImageDataError(f"the image is {width}x{height}; the limit is {MAX_PIXELS} pixels")
    try:
        thumbnail = make_thumbnail(data, thumb_size)
    except (OSError, ValueError, SyntaxError) as exc:
        # verify() reads chunk structure only; a truncated or corrupt pixel stream fails here. An OSError
        # must not escape as is: the worker would take it for a lost connection and retry.
        raise ImageDataError(
            f"the provider returned a {fmt} image whose pixels cannot be decoded ({exc.__class__.__name__})"
        ) from None
    content_type, ext = ACCEPTED[fmt]
    return ProcessedImage(
        data=data,
        content_type=content_type,
        extension=ext,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
        thumbnail=thumbnail,
    )


def guess_content_type(data: bytes, default: str) -> str:
    """An image's content type from its first bytes, for upload headers; `process_image` does the
    real check later. `default` when the bytes are none of PNG, JPEG, WebP."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return default


def make_thumbnail(data: bytes, size: int = THUMB_SIZE) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at reduced scale
        thumb = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB")
        thumb.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        # A camera-style JPEG stores its pixels sideways with an EXIF Orientation tag; the thumbnail
        # (which carries no EXIF) is stored upright.
        ImageOps.exif_transpose(thumb, in_place=True)
        out = io.BytesIO()
        thumb.save(out, format="WEBP", quality=80, method=0)
        return out.getvalue()
