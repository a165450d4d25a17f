"""Decode and validate one image and one caption; a bad one yields a Problem (reason + detail), never an exception.

Pillow does the decoding. The checks are the ones a cluster job needs before an image reaches a model: empty or
non-image bytes, truncated files, decompression bombs (pixel count read from the header, before decoding), EXIF
orientation, colour mode, and side limits.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError


EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Problem:
    """Why a row cannot be used. `reason` is a short stable key (counted in manifests); `detail` is for people."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class ImageLimits:
    min_side: int = 28
    max_side: int = 16384
    max_pixels: int = 89_478_485


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, upright
    rewritten: bool  # True when EXIF rotation or a colour conversion changed it: the original bytes no longer match


def decode_image(data: bytes | None, limits: ImageLimits) -> DecodedImage | Problem:
    """Bytes -> an RGB image upright per its EXIF orientation, or the Problem that stops it."""
    if not data:
        return Problem("empty_image", "zero bytes")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past 2x its limit raises) on huge images; our own pixel bound below decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limits.max_pixels:
                return Problem("too_many_pixels", f"{width}x{height} exceeds {limits.max_pixels} pixels")
            image.load()
    except Image.DecompressionBombError as err:
        return Problem("too_many_pixels", str(err))
    except UnidentifiedImageError:
        return Problem("not_an_image", f"{len(data)} bytes that no image decoder recognizes")
    except (OSError, SyntaxError, ValueError) as err:
        # Pillow reports truncated or corrupt data as OSError ("image file is truncated") or SyntaxError.
        return Problem("corrupt_image", str(err))
    rotated = image.getexif().get(EXIF_ORIENTATION, 1) != 1
    upright = ImageOps.exif_transpose(image) if rotated else image
    rewritten = rotated or upright.mode != "RGB"
    image = upright.convert("RGB") if upright.mode != "RGB" else upright
    shorter, longer = min(image.size), max(image.size)
    if shorter < limits.min_side:
        return Problem("image_too_small", f"{image.size[0]}x{image.size[1]}, shorter side under {limits.min_side}")
    if longer > limits.max_side:
        return Problem("image_too_large", f"{image.size[0]}x{image.size[1]}, longer side over {limits.max_side}")
    return DecodedImage(image, rewritten)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def check_caption(caption: object, max_chars: int) -> str | Problem:
    """A usable caption (stripped), or the Problem with it."""
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError as err:
            return Problem("caption_invalid_utf8", str(err))
    if caption is None:
        return Problem("missing_caption", "no caption field")
    if not isinstance(caption, str):
        return Problem("caption_not_text", f"caption is {type(caption).__name__}")
    caption = caption.strip()
    if not caption:
        return Problem("empty_caption", "caption is empty or whitespace")
    # Training data marks images with this placeholder: one inside a caption would become a second image token
    # for one image, and collation fails (the release has the same defect). Kept out, with its reason.
    if "<image>" in caption:
        return Problem("image_placeholder_in_caption", "the caption contains the image placeholder <image>")
    if len(caption) > max_chars:
        return Problem("caption_too_long", f"{len(caption)} characters, limit {max_chars}")
    return caption
