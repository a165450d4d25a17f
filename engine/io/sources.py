"""Image-caption shards -> caption rows, one format decoder per storage format, plain Python over file objects.

Every input record becomes exactly one row, even a broken one: a JSONL line that is not JSON, a record without a
caption, a tar sample without an image. Such a row carries `problem_reason`/`problem_detail` and is quarantined
downstream, so `rows_in` counts it. Rows get a `row_key` ("<shard>:<index>") that is unique and stable across runs:
it is the unit of resume. A row without an `id` gets its row_key as id.

Formats: parquet, jsonl, webdataset (tar), hf_disk (`datasets.Dataset.save_to_disk` folders: Arrow stream files).
Paths are local or any fsspec URL. The `jsonl` format reads `.jsonl` and `.json` files, each either JSON Lines or one
JSON array of records (a file whose first non-blank character is `[`; it is parsed whole, by one read task, so split a
very large array into several files for parallel reads; an array that does not parse is one broken row).

A record (a JSON object, a table row, a tar sample's .json) has one of three shapes, told apart by its keys:
- flat (the engine's own): `image` (bytes) or `image_path`, `caption`, optional `id`, `instruction`, `meta`;
- the release's ShareGPT shape: `{"images": [path], "messages": [{"role": "user", "content": "<image>..."},
  {"role": "assistant", "content": caption}]}` (the data AdaMLLM publishes);
- the LLaVA conversation shape: `{"image": path, "conversations": [{"from": "human", "value": "<image>\n..."},
  {"from": "gpt", "value": caption}]}`.
In the two chat shapes the user turn is the row's `instruction` (kept as written; compose removes its `<image>`
placeholders, as the release does) and the assistant turn its caption; one image and exactly one exchange are
required (the release would silently use only the first), else the record is quarantined as `malformed_record`. Image
paths are relative to the file's folder, as for flat records. Captions are kept verbatim.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from engine.io.images import Problem

SHARD_EXTENSIONS = {
    "parquet": (".parquet",),
    "jsonl": (".jsonl", ".json"),
    "webdataset": (".tar",),
    "hf_disk": (".arrow",),
}
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
CAPTION_EXTENSIONS = ("txt", "caption", "text")
RECORD_BATCH_ROWS = 256
READ_CHUNK_BYTES = 1 << 20
MALFORMED_RECORD = "malformed_record"

# A raw caption row, as the format decoders emit it.
RAW_SCHEMA = pa.schema(
    [
        pa.field("row_key", pa.string()),
        pa.field("id", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("image", pa.binary()),
        pa.field("image_path", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("instruction", pa.string()),
        pa.field("meta", pa.string()),
        pa.field("problem_reason", pa.string()),
        pa.field("problem_detail", pa.string()),
    ]
)


def dataset_root(path: str) -> str:
    """The folder that image paths of a data set must stay inside: the folder itself, a file's folder, a glob's
    fixed prefix."""
    fs, fs_path = fsspec.core.url_to_fs(path)
    if any(ch in fs_path for ch in "*?["):
        fixed = fs_path[: min(fs_path.find(ch) for ch in "*?[" if ch in fs_path)]
        root = fixed.rsplit("/", 1)[0]
    elif fs.isdir(fs_path):
        root = fs_path.rstrip("/")
    else:
        root = posixpath.dirname(fs_path)
    return fs.unstrip_protocol(root) if "://" in path else root


def list_shards(path: str, data_format: str) -> list[str]:
    """Shard files of a data set, sorted, as URLs/paths openable with fsspec. Raises FileNotFoundError if none."""
    fs, fs_path = fsspec.core.url_to_fs(path)
    extensions = SHARD_EXTENSIONS[data_format]
    if any(ch in fs_path for ch in "*?["):
        found = fs.glob(fs_path)
    elif fs.isdir(fs_path):
        found = [p for p in fs.find(fs_path) if p.endswith(extensions)]
    elif fs.exists(fs_path):
        found = [fs_path]
    else:
        found = []
    found = sorted(p for p in found if fs.isfile(p))
    if not found:
        raise FileNotFoundError(f"no {data_format} shards ({', '.join(extensions)}) at {path}")
    return [fs.unstrip_protocol(p) if "://" in path else p for p in found]


def shard_name(shard_path: str, root: str) -> str:
    """The shard's path relative to the data set root: stable across machines and mounts."""
    relative = posixpath.relpath(shard_path.split("://", 1)[-1], root.split("://", 1)[-1])
    return relative if not relative.startswith("..") else posixpath.basename(shard_path)


def resolve_image_path(root: str, shard: str, image_path: str) -> str | Problem:
    """Join an image path (relative to its shard's folder) onto the root; refuse paths that leave the root."""
    if not image_path:
        return Problem("missing_image", "empty image_path")
    if image_path.startswith(("/", "\\")) or "://" in image_path or (len(image_path) > 1 and image_path[1] == ":"):
        return Problem("path_escape", f"absolute image_path {image_path!r}")
    relative = posixpath.normpath(posixpath.join(posixpath.dirname(shard), image_path.replace("\\", "/")))
    if relative == ".." or relative.startswith("../"):
        return Problem("path_escape", f"image_path {image_path!r} leaves the data set root")
    return f"{root.rstrip('/')}/{relative}"


@dataclass(frozen=True)
class ChatShape:
    """Where a chat-shaped record keeps its image, its turns, and each turn's role and text."""

    image_key: str
    turns_key: str
    role_key: str
    text_key: str
    roles: tuple[str, str]  # the user's and the assistant's


CHAT_SHAPES = (
    ChatShape("images", "messages", "role", "content", ("user", "assistant")),
    ChatShape("image", "conversations", "from", "value", ("human", "gpt")),
)


def _chat_record(record: dict[str, Any], shape: ChatShape) -> tuple[dict[str, Any], Problem | None]:
    """A chat-shaped record as a flat one: its one image, its user turn as instruction, its answer as caption."""
    turns = record[shape.turns_key]
    roles = [turn.get(shape.role_key) if isinstance(turn, dict) else None for turn in turns] \
        if isinstance(turns, list) else None
    images = record.get(shape.image_key)
    images = [image for image in (images if isinstance(images, list) else [images]) if image is not None]
    if roles != list(shape.roles):
        user, assistant = shape.roles
        problem = f"'{shape.turns_key}' must be one {user} turn and one {assistant} turn, got roles {roles}"
    elif len(images) != 1:
        problem = f"'{shape.image_key}' must hold exactly one image, got {len(images)}"
    else:
        image_field = "image_path" if isinstance(images[0], str) else "image"
        return {"id": record.get("id"), image_field: images[0], "instruction": turns[0].get(shape.text_key),
                "caption": turns[1].get(shape.text_key), "meta": record.get("meta")}, None
    return {"id": record.get("id")}, Problem(MALFORMED_RECORD, problem)


def flat_record(record: dict[str, Any]) -> tuple[dict[str, Any], Problem | None]:
    """The record in the engine's flat shape, whichever of the three shapes it has (see the module docstring)."""
    shape = next((shape for shape in CHAT_SHAPES if shape.turns_key in record), None)
    return (record, None) if shape is None else _chat_record(record, shape)


def _row(shard: str, index: int, record: dict[str, Any] | None, problem: Problem | None = None) -> dict[str, Any]:
    record = record or {}
    if problem is None:
        record, problem = flat_record(record)
    image = record.get("image")
    image_path = record.get("image_path")
    if isinstance(image, dict):  # Hugging Face `Image` feature: {"bytes": ..., "path": ...}
        image_path = image_path or (None if image.get("bytes") else image.get("path"))
        image = image.get("bytes")
    meta = record.get("meta")
    if meta is not None and not isinstance(meta, str):
        meta = json.dumps(meta, ensure_ascii=False, default=str)
    instruction = record.get("instruction")
    if problem is None:
        if record.get("caption") is None:
            problem = Problem("missing_field", "no 'caption'")
        elif image is None and not image_path:
            problem = Problem("missing_field", "neither 'image' nor 'image_path'")
        elif instruction is not None and not isinstance(instruction, str):
            problem = Problem(MALFORMED_RECORD, f"the instruction is {type(instruction).__name__}, not text")
    row_key = f"{shard}:{index}"
    raw_id = record.get("id")
    caption = record.get("caption")
    return {
        "row_key": row_key,
        "id": str(raw_id) if raw_id not in (None, "") else row_key,
        "shard": shard,
        "row": index,
        "image": bytes(image) if isinstance(image, (bytes, bytearray, memoryview)) else None,
        "image_path": image_path if isinstance(image_path, str) else None,
        "caption": caption if isinstance(caption, str) else (None if caption is None else str(caption)),
        "instruction": instruction if isinstance(instruction, str) else None,
        "meta": meta,
        "problem_reason": problem.reason if problem else None,
        "problem_detail": problem.detail if problem else None,
    }


def _rows_from_table_batches(batches: Iterator[pa.RecordBatch], shard: str) -> Iterator[dict[str, Any]]:
    index = 0
    for batch in batches:
        for record in batch.to_pylist():
            yield _row(shard, index, record)
            index += 1


def read_parquet_shard(file: IO[bytes], shard: str) -> Iterator[dict[str, Any]]:
    yield from _rows_from_table_batches(pq.ParquetFile(file).iter_batches(batch_size=RECORD_BATCH_ROWS), shard)


def read_arrow_stream_shard(file: IO[bytes], shard: str) -> Iterator[dict[str, Any]]:
    """A `save_to_disk` data file (Arrow IPC stream format)."""
    yield from _rows_from_table_batches(iter(pa.ipc.open_stream(file)), shard)


def _lines(pending: bytes, file: IO[bytes]) -> Iterator[bytes]:
    """Lines of a binary stream whose first `pending` bytes were already read. Written out because pyarrow's stream
    files (what Ray hands a datasource) have no readline."""
    while True:
        *complete, pending = pending.split(b"\n")
        yield from complete
        chunk = file.read(READ_CHUNK_BYTES)
        if not chunk:
            break
        pending += chunk
    if pending:
        yield pending


def _record_row(shard: str, index: int, record: Any, where: str) -> dict[str, Any]:
    if isinstance(record, dict):
        return _row(shard, index, record)
    return _row(shard, index, None, Problem("malformed_json", f"{where}: not an object"))


def _json_lines_rows(lines: Iterator[bytes], shard: str) -> Iterator[dict[str, Any]]:
    """One row per non-blank line; line numbers (1-based) are kept in the detail of a broken line."""
    index = 0
    for line_number, raw_line in enumerate(lines, start=1):
        if not raw_line.strip():
            continue
        try:
            record = json.loads(raw_line.decode("utf-8"))
        except UnicodeDecodeError as err:
            yield _row(shard, index, None, Problem("invalid_utf8", f"line {line_number}: {err}"))
        except json.JSONDecodeError as err:
            yield _row(shard, index, None, Problem("malformed_json", f"line {line_number}: {err.msg}"))
        else:
            yield _record_row(shard, index, record, f"line {line_number}")
        index += 1


def _json_array_rows(data: bytes, shard: str) -> Iterator[dict[str, Any]]:
    """One row per element of a JSON array; an array that does not parse is one broken row (its records cannot be
    told apart)."""
    try:
        records = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        yield _row(shard, 0, None, Problem("invalid_utf8", f"JSON array: {err}"))
        return
    except json.JSONDecodeError as err:
        yield _row(shard, 0, None, Problem("malformed_json", f"JSON array, line {err.lineno}: {err.msg}"))
        return
    for index, record in enumerate(records):
        yield _record_row(shard, index, record, f"element {index}")


def read_jsonl_shard(file: IO[bytes], shard: str) -> Iterator[dict[str, Any]]:
    """JSON Lines, or one JSON array of records when the first non-blank character is `[`."""
    head = file.read(READ_CHUNK_BYTES)
    if head.lstrip()[:1] == b"[":
        yield from _json_array_rows(head + file.read(), shard)
    else:
        yield from _json_lines_rows(_lines(head, file), shard)


def _sample_record(key: str, members: dict[str, bytes]) -> tuple[dict[str, Any], Problem | None]:
    record: dict[str, Any] = {}
    meta = members.get("json")
    if meta is not None:
        try:
            parsed = json.loads(meta.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return record, Problem("malformed_json", f"sample {key}.json: {err}")
        if isinstance(parsed, dict):
            record["id"] = parsed.pop("id", None)
            record["caption"] = parsed.pop("caption", None)
            record["instruction"] = parsed.pop("instruction", None)
            record["meta"] = parsed or None
    record["id"] = record.get("id") or key
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
    record["image"] = members[image_ext] if image_ext else None
    caption_ext = next((ext for ext in CAPTION_EXTENSIONS if ext in members), None)
    if caption_ext:
        try:
            record["caption"] = members[caption_ext].decode("utf-8")
        except UnicodeDecodeError as err:
            return record, Problem("caption_invalid_utf8", f"sample {key}.{caption_ext}: {err}")
    return record, None


def read_webdataset_shard(file: IO[bytes], shard: str) -> Iterator[dict[str, Any]]:
    """WebDataset tar: consecutive members sharing a key ("dir/0001.jpg", "dir/0001.txt", "dir/0001.json") form
    one sample. The sample key is its id unless its .json names one."""
    index = 0
    current_key, members = None, {}
    with tarfile.open(fileobj=file, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            directory, _, base = member.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            key = f"{directory}/{stem}" if directory else stem
            if key != current_key and current_key is not None:
                record, problem = _sample_record(current_key, members)
                yield _row(shard, index, record, problem)
                index += 1
                members = {}
            current_key = key
            extracted = tar.extractfile(member)
            members[ext.lower() if dot else ""] = extracted.read() if extracted else b""
    if current_key is not None:
        record, problem = _sample_record(current_key, members)
        yield _row(shard, index, record, problem)


SHARD_READERS = {
    "parquet": read_parquet_shard,
    "jsonl": read_jsonl_shard,
    "webdataset": read_webdataset_shard,
    "hf_disk": read_arrow_stream_shard,
}


def read_shard(data_format: str, file: IO[bytes], shard: str) -> Iterator[dict[str, Any]]:
    """Rows of one shard. A shard that cannot be read at all yields one row saying so (it is still counted)."""
    rows = SHARD_READERS[data_format](file, shard)
    index = 0
    try:
        for row in rows:
            index += 1
            yield row
    except (OSError, ValueError, tarfile.TarError, pa.ArrowException) as err:
        yield _row(shard, index, None, Problem("unreadable_shard", f"{type(err).__name__} after {index} rows: {err}"))
