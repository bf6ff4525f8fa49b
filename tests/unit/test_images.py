"""process_image: the format is sniffed (never trusted), the caps hold, the facts are right and the
thumbnail is a small WebP."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from imagen_worker import images
from imagen_worker.errors import ImageDataError, PermanentJobError
from imagen_worker.images import THUMB_SIZE, process_image


def encode(fmt: str, size: tuple[int, int], mode: str = "RGB", options: dict[str, Any] | None = None) -> bytes:
    img = Image.linear_gradient("L").resize(size).convert(mode)
    out = io.BytesIO()
    img.save(out, format=fmt, **(options or {}))
    return out.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int, idat: bytes) -> bytes:
    """A structurally valid PNG (every CRC right) whose header claims width x height."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"this is plainly text, not an image",
        b"<!DOCTYPE html><html><body>rate limited</body></html>",
        b'{"error": {"message": "content policy"}}',
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,  # a PNG signature and nothing valid after it
    ],
)
def test_non_image_bytes_are_refused_as_a_permanent_error(data: bytes) -> None:
    with pytest.raises(ImageDataError, match="the provider returned bytes that are not an image") as err:
        process_image(data)
    assert isinstance(err.value, PermanentJobError)


def test_no_bytes_at_all_are_refused() -> None:
    with pytest.raises(ImageDataError, match="the provider returned no image bytes"):
        process_image(b"")


def test_a_file_over_the_byte_cap_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode("PNG", (64, 64))
    monkeypatch.setattr(images, "MAX_BYTES", len(data) - 1)
    with pytest.raises(ImageDataError, match=rf"the image is {len(data)} bytes; the limit is {len(data) - 1} bytes"):
        process_image(data)


def test_the_real_byte_cap_is_50_mib() -> None:
    with pytest.raises(ImageDataError, match=r"the limit is 52428800 bytes"):
        process_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * images.MAX_BYTES)


def test_an_image_over_the_pixel_cap_is_refused_from_its_header() -> None:
    # 9000 x 9000 = 81 M pixels: over our 64 Mi cap, under Pillow's own warning threshold.
    data = png_claiming(9000, 9000, zlib.compress(b"\x00" * 64))
    with pytest.raises(ImageDataError, match=r"the image is 9000x9000; the limit is 67108864 pixels"):
        process_image(data)


def test_a_decompression_bomb_is_refused_not_crashed_on() -> None:
    data = png_claiming(20000, 20000, zlib.compress(b"\x00" * 64))
    with pytest.raises(ImageDataError, match="too large to decode"):
        process_image(data)


def test_an_unaccepted_format_is_refused_naming_what_is_accepted() -> None:
    with pytest.raises(ImageDataError, match=r"image format BMP is not accepted; accepted: PNG, JPEG, WEBP, GIF"):
        process_image(encode("BMP", (32, 32)))


def test_a_png_whose_pixels_cannot_be_decoded_is_an_image_error_not_an_os_error() -> None:
    # Right chunk structure and CRCs (so verify() passes), garbage where the compressed pixels go.
    data = png_claiming(64, 64, b"definitely not a zlib stream" * 4)
    with pytest.raises(ImageDataError, match=r"a PNG image whose pixels cannot be decoded"):
        process_image(data)


# -- facts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type", "extension", "save"),
    [
        ("PNG", "image/png", "png", {}),
        ("JPEG", "image/jpeg", "jpg", {"quality": 85}),
        ("WEBP", "image/webp", "webp", {"quality": 80}),
        ("GIF", "image/gif", "gif", {}),
    ],
)
def test_accepted_formats_report_content_type_size_and_sha256(
    fmt: str, content_type: str, extension: str, save: dict[str, Any]
) -> None:
    data = encode(fmt, (640, 360), options=save)
    image = process_image(data)
    assert (image.content_type, image.extension) == (content_type, extension)
    assert (image.width, image.height) == (640, 360)
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert image.data is data


def test_the_format_comes_from_the_bytes_not_from_what_anyone_claims() -> None:
    # JPEG bytes are a JPEG whatever a provider's response said; there is no parameter to claim otherwise.
    assert process_image(encode("JPEG", (16, 16))).content_type == "image/jpeg"


# -- thumbnail -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "size", "mode", "expected"),
    [
        ("PNG", (1024, 1024), "RGB", (256, 256)),
        ("PNG", (1792, 1024), "RGBA", (256, 146)),
        ("JPEG", (1024, 1536), "RGB", (171, 256)),
        ("WEBP", (2048, 512), "RGB", (256, 64)),
        ("GIF", (600, 600), "P", (256, 256)),
        ("PNG", (100, 60), "L", (100, 60)),  # never enlarged
    ],
)
def test_thumbnail_is_webp_within_256_px_on_its_long_side(
    fmt: str, size: tuple[int, int], mode: str, expected: tuple[int, int]
) -> None:
    image = process_image(encode(fmt, size, mode))
    with Image.open(io.BytesIO(image.thumbnail)) as thumb:
        assert thumb.format == "WEBP"
        assert max(thumb.size) <= THUMB_SIZE
        assert thumb.size == expected


def test_thumbnail_keeps_transparency() -> None:
    img = Image.new("RGBA", (512, 512), (255, 0, 0, 0))
    img.paste((0, 0, 255, 255), (128, 128, 384, 384))
    out = io.BytesIO()
    img.save(out, format="PNG")
    with Image.open(io.BytesIO(process_image(out.getvalue()).thumbnail)) as thumb:
        assert thumb.mode == "RGBA"
        assert thumb.getpixel((2, 2))[3] == 0  # type: ignore[index]
        assert thumb.getpixel((128, 128))[3] == 255  # type: ignore[index]


def test_thumbnail_of_a_sideways_jpeg_with_exif_orientation_is_upright() -> None:
    """Orientation 6: the pixels are stored turned 90° anticlockwise; viewers turn them clockwise."""
    img = Image.new("RGB", (400, 200), (255, 0, 0))
    img.paste((0, 0, 255), (200, 0, 400, 200))  # stored: red left half, blue right half
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif)
    with Image.open(io.BytesIO(process_image(out.getvalue()).thumbnail)) as thumb:
        assert thumb.size == (128, 256)  # upright: portrait
        rgb = thumb.convert("RGB")
        top, bottom = rgb.getpixel((64, 20)), rgb.getpixel((64, 236))
        assert isinstance(top, tuple) and isinstance(bottom, tuple)
        assert top[0] > 200 and top[2] < 60  # the stored left half is on top once turned clockwise
        assert bottom[2] > 200 and bottom[0] < 60
