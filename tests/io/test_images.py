"""Image and caption validation: every broken kind yields its Problem; good images come out RGB and upright."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from engine.io.images import ImageLimits, Problem, check_caption, decode_image
from tests.fixtures import jpeg_bytes, png_bytes

LIMITS = ImageLimits(min_side=28, max_side=1024, max_pixels=600 * 600)


def encoded(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_image"),
        (None, "empty_image"),
        (b"plain text, not pixels", "not_an_image"),
        (jpeg_bytes(size=256)[:300], "corrupt_image"),
        (png_bytes(size=16), "image_too_small"),
        (encoded(Image.new("RGB", (2000, 40))), "image_too_large"),
        (encoded(Image.new("L", (700, 700))), "too_many_pixels"),
    ],
)
def test_broken_images_yield_their_reason(data, reason):
    result = decode_image(data, LIMITS)
    assert isinstance(result, Problem) and result.reason == reason


def test_pixel_bound_is_checked_before_decoding():
    # A 20000x20000 PNG of one colour compresses to a few hundred KB but would decode to 1.2 GB.
    bomb = encoded(Image.new("1", (20000, 20000)))
    result = decode_image(bomb, LIMITS)
    assert isinstance(result, Problem) and result.reason == "too_many_pixels"


def test_palette_and_alpha_images_become_rgb():
    for mode in ("P", "RGBA", "L", "CMYK"):
        decoded = decode_image(encoded(Image.new(mode, (40, 40)), "JPEG" if mode == "CMYK" else "PNG"), LIMITS)
        assert decoded.image.mode == "RGB" and decoded.rewritten


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (80, 40), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    decoded = decode_image(encoded(wide, "JPEG", exif=exif.tobytes()), LIMITS)
    assert decoded.image.size == (40, 80) and decoded.rewritten


def test_plain_rgb_image_is_not_rewritten():
    decoded = decode_image(png_bytes(), LIMITS)
    assert decoded.image.size == (64, 64) and not decoded.rewritten


@pytest.mark.parametrize(
    "caption, reason",
    [
        (None, "missing_caption"),
        ("   \n", "empty_caption"),
        ("x" * 101, "caption_too_long"),
        (b"\xff\xfe broken", "caption_invalid_utf8"),
        (42, "caption_not_text"),
        ("A scan.<image> Another one.", "image_placeholder_in_caption"),
    ],
)
def test_bad_captions(caption, reason):
    result = check_caption(caption, max_chars=100)
    assert isinstance(result, Problem) and result.reason == reason


def test_good_caption_is_stripped():
    assert check_caption("  A red circle.\n", max_chars=100) == "A red circle."
    assert check_caption("Ein rotes Quadrat – groß.".encode(), max_chars=100) == "Ein rotes Quadrat – groß."
