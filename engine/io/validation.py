"""Turn a raw caption row into a usable one, or mark why it is not: load the image (inline bytes or a path inside the
data set), decode and check it, check the caption. Plain Python; runs inside Ray Data tasks."""

from __future__ import annotations

from typing import Any

import fsspec

from engine.io.images import ImageLimits, Problem, check_caption, decode_image, encode_png
from engine.io.sources import resolve_image_path

VALIDATION_STAGE = "validate"


def _load_image_bytes(row: dict[str, Any], root: str) -> bytes | Problem:
    if row["image"] is not None:
        return row["image"]
    location = resolve_image_path(root, row["shard"], row["image_path"] or "")
    if isinstance(location, Problem):
        return location
    try:
        with fsspec.open(location, "rb") as file:
            return file.read()
    except FileNotFoundError:
        return Problem("missing_image", f"no file at {row['image_path']!r}")
    except (OSError, ValueError) as err:
        return Problem("unreadable_image", f"{row['image_path']!r}: {err}")


def validate_row(row: dict[str, Any], root: str, limits: ImageLimits, max_caption_chars: int) -> dict[str, Any]:
    """Fill `image` with PNG or original bytes of a decodable RGB image, or set `problem_*` (keeping the original
    columns for the quarantine). The caption is checked (not empty once stripped, not too long) but kept verbatim, as
    the release sends it to the synthesizer and trains on it."""
    if row["problem_reason"] is not None:
        row["problem_stage"] = "read"
        return row
    checked = check_caption(row["caption"], max_caption_chars)
    data = _load_image_bytes(row, root)
    image = data if isinstance(data, Problem) else decode_image(data, limits)
    problem = next((result for result in (image, checked) if isinstance(result, Problem)), None)
    if problem is not None:
        row.update(problem_stage=VALIDATION_STAGE, problem_reason=problem.reason, problem_detail=problem.detail)
        return row
    # Keep the original encoding (a JPEG stays small) unless decoding had to rotate or convert the image.
    row["image"] = encode_png(image.image) if image.rewritten else data
    return row
