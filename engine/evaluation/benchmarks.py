"""Benchmark records: read from the hub or a local copy, normalized into one row shape, written as a Parquet table.

Sources (BenchmarkConfig): `path: null` reads the task's hub data set with `datasets.load_dataset(hub_id, subset,
split="test")` (on a cluster, where the hub is reachable); a local copy is Parquet (a file or a folder of files),
JSONL (one object a line, images inline or as `image_path` relative to the JSONL file's folder) or a
`datasets.save_to_disk` folder (`hf_disk`). Records are read in order and numbered from 0: the number is the
example's index, which seeds the multiple-choice fallback guess and so must not depend on how a run was scheduled.

A record that cannot be evaluated (a missing field, a label the task cannot read, an image that is absent or outside
the data set) becomes a row with `error` set, never an exception: it is counted and reported, and scored like an
unanswered question when its label is usable (the paper's evaluation does the same). Images are decoded later, by
the inference actors, which record an undecodable image the same way.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from engine.config import BenchmarkConfig
from engine.evaluation.tasks import RecordError, TaskSpec
from engine.io.images import Problem, encode_png
from engine.io.sources import dataset_root, list_shards, resolve_image_path, shard_name

ROWS_PER_FILE = 256
_READ_BATCH_ROWS = 256
_OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# One benchmark example, normalized: what the inference actors read. `label` is text (JSON text for list labels),
# `options` JSON text of {choice: option text}.
BENCHMARK_ROW_SCHEMA = pa.schema(
    [
        pa.field("task", pa.string()),
        # Unique across every task of a run (task:example_id): one actor pool predicts all of a model's tasks in one
        # Ray Data job, whose checkpoint records finished rows by this id.
        pa.field("row_id", pa.string()),
        pa.field("example_id", pa.string()),
        pa.field("example_index", pa.int64()),
        pa.field("image", pa.binary()),
        pa.field("input", pa.string()),
        pa.field("label", pa.string()),
        pa.field("answer_type", pa.string()),
        pa.field("options", pa.string()),
        pa.field("error", pa.string()),
    ]
)

@dataclass(frozen=True)
class RawRecord:
    """A record as its source holds it. `root`/`shard` locate relative image paths (local files only); `problem` says
    why the record could not be read at all."""

    fields: Mapping[str, Any]
    root: str | None = None
    shard: str | None = None
    problem: RecordError | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Sources


def _arrow_dataset_records(dataset) -> Iterator[RawRecord]:
    # Arrow batches keep an `Image` feature as {"bytes", "path"}: no decode to PIL and back.
    for table in dataset.with_format("arrow").iter(batch_size=_READ_BATCH_ROWS):
        for fields in table.to_pylist():
            yield RawRecord(fields)


def _hub_records(spec: TaskSpec) -> Iterator[RawRecord]:
    import datasets

    if spec.hub_id is None:
        raise ValueError(f"task {spec.name!r} has no hub copy; set the benchmark's path to a local copy")
    yield from _arrow_dataset_records(datasets.load_dataset(spec.hub_id, spec.hub_config, split=spec.hub_split))


def _hf_disk_records(spec: TaskSpec, path: str) -> Iterator[RawRecord]:
    import datasets

    loaded = datasets.load_from_disk(path)
    if isinstance(loaded, datasets.DatasetDict):
        if spec.hub_split in loaded:
            loaded = loaded[spec.hub_split]
        elif len(loaded) == 1:
            loaded = next(iter(loaded.values()))
        else:
            raise ValueError(f"{path} holds splits {sorted(loaded)} and no {spec.hub_split!r} split")
    yield from _arrow_dataset_records(loaded)


def _file_records(path: str, data_format: str) -> Iterator[RawRecord]:
    root = dataset_root(path)
    read = _parquet_file_records if data_format == "parquet" else _jsonl_file_records
    for file in list_shards(path, data_format):
        shard = shard_name(file, root)
        try:
            with fsspec.open(file, "rb") as handle:
                for fields, problem in read(handle, shard):
                    yield RawRecord(fields, root, shard, problem)
        # A file that cannot be read past some point still counts once, so the benchmark's size stays visible.
        except (OSError, ValueError, pa.ArrowException) as err:
            yield RawRecord({}, root, shard, RecordError("unreadable_source", f"{shard}: {err}"))


def _parquet_file_records(handle, shard: str) -> Iterator[tuple[dict[str, Any], None]]:
    for batch in pq.ParquetFile(handle).iter_batches(batch_size=_READ_BATCH_ROWS):
        for fields in batch.to_pylist():
            yield fields, None


def _jsonl_file_records(handle, shard: str) -> Iterator[tuple[dict[str, Any], RecordError | None]]:
    for line_number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            yield {}, RecordError("malformed_json", f"{shard} line {line_number}: {err}")
            continue
        if isinstance(fields, dict):
            yield fields, None
        else:
            yield {}, RecordError("malformed_json", f"{shard} line {line_number}: not an object")


def raw_records(spec: TaskSpec, benchmark: BenchmarkConfig) -> Iterator[RawRecord]:
    """The benchmark's records in source order (files sorted by name)."""
    if benchmark.path is None:
        return _hub_records(spec)
    if benchmark.format == "hf_disk":
        return _hf_disk_records(spec, benchmark.path)
    return _file_records(benchmark.path, benchmark.format)


# ---------------------------------------------------------------------------------------------------------------------
# Normalization


def _required(fields: Mapping[str, Any], name: str) -> Any:
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RecordError("missing_field", f"no {name!r}")
    return value


def _answer_type(fields: Mapping[str, Any]) -> str:
    value = str(_required(fields, "answer_type")).strip().upper()
    if value not in ("OPEN", "CLOSED"):
        raise RecordError("bad_answer_type", f"expected OPEN or CLOSED, got {fields['answer_type']!r}")
    return value


def record_options(fields: Mapping[str, Any]) -> dict[str, str]:
    """A record's multiple-choice options: letter columns (`A`, `B`, ...) or an `options` mapping, list or JSON text
    of either (a list is lettered A, B, ...)."""
    letters = {letter: fields[letter] for letter in _OPTION_LETTERS if fields.get(letter) not in (None, "")}
    options: Any = letters or fields.get("options")
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError:
            raise RecordError("bad_options", "'options' is text but not JSON") from None
    if isinstance(options, (list, tuple)):
        options = dict(zip(_OPTION_LETTERS, options))
    if not isinstance(options, Mapping) or not options:
        raise RecordError("missing_field", "no options (letter columns or 'options')")
    return {str(choice): str(text) for choice, text in options.items()}


def _read_image_file(location: str) -> bytes:
    try:
        with fsspec.open(location, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise RecordError("missing_image", f"no file at {location!r}") from None
    except (OSError, ValueError) as err:
        raise RecordError("unreadable_image", f"{location!r}: {err}") from None


def _image_bytes(raw: RawRecord) -> bytes:
    """The encoded image of a record: inline bytes, a Hugging Face `Image` value, a PIL image or a file path."""
    value = raw.fields.get("image")
    path = raw.fields.get("image_path")
    if isinstance(value, Mapping):  # Hugging Face `Image` feature: {"bytes": ..., "path": ...}
        value, path = value.get("bytes"), path or value.get("path")
    elif isinstance(value, str):
        value, path = None, path or value
    if isinstance(value, (bytes, bytearray, memoryview)):
        if not len(value):
            raise RecordError("empty_image", "zero bytes")
        return bytes(value)
    if isinstance(value, Image.Image):
        return encode_png(value)
    if not path:
        raise RecordError("missing_field", "no 'image' or 'image_path'")
    if raw.root is None:  # hub and save_to_disk copies record where their files were stored
        return _read_image_file(path)
    location = resolve_image_path(raw.root, raw.shard or "", path)
    if isinstance(location, Problem):
        raise RecordError(location.reason, location.detail)
    return _read_image_file(location)


def normalize_record(spec: TaskSpec, raw: RawRecord, index: int, example_id: str) -> dict[str, Any]:
    """One benchmark row (BENCHMARK_ROW_SCHEMA). Every field that can be read is kept; `error` holds the first
    problem found, so a record with a usable label but no image still counts as an unanswered question."""
    fields = raw.fields
    problems = [raw.problem] if raw.problem else []

    def attempt(read):
        try:
            return read()
        except RecordError as problem:
            problems.append(problem)
            return None

    answer_type = fields.get("answer_type")
    row = {
        "task": spec.name,
        "row_id": f"{spec.name}:{example_id}",
        "example_id": example_id,
        "example_index": index,
        "input": attempt(lambda: str(_required(fields, "input"))),
        # An empty label is kept and scored (a miss), as the official evaluation counts it; a missing one is an error.
        "label": attempt(lambda: spec.encode_label(fields.get("label"))),
        "answer_type": (attempt(lambda: _answer_type(fields)) if spec.answer_type
                        else None if answer_type is None else str(answer_type)),
        "options": attempt(lambda: json.dumps(record_options(fields), ensure_ascii=False)) if spec.options else None,
        "image": attempt(lambda: _image_bytes(raw)) if not raw.problem else None,
    }
    row["error"] = str(problems[0]) if problems else None
    return row


def benchmark_rows(spec: TaskSpec, benchmark: BenchmarkConfig) -> Iterator[dict[str, Any]]:
    """The benchmark's normalized rows in order (the first `limit` records when set), each with a unique id: the
    record's own `id` when it has one, else its index."""
    seen: set[str] = set()
    for index, raw in enumerate(raw_records(spec, benchmark)):
        if benchmark.limit is not None and index >= benchmark.limit:
            return
        own_id = raw.fields.get("id")
        example_id = str(own_id) if own_id not in (None, "") else f"{index:06d}"
        if example_id in seen:  # resume filters on ids: a repeated one would hide a second example
            example_id = f"{example_id}#{index}"
        seen.add(example_id)
        yield normalize_record(spec, raw, index, example_id)


def error_reason(error: str) -> str:
    """The stable key of an `error` value ("missing_field: no 'input'" -> "missing_field")."""
    return error.split(":", 1)[0]


def write_table(rows: Iterator[Mapping[str, Any]], folder: str, fs: fsspec.AbstractFileSystem) -> dict[str, Any]:
    """Write rows as Parquet files of ROWS_PER_FILE rows each (so readers can split the work); returns the row count
    and the errors by reason. An empty benchmark still gets one (empty) file, so the table is always readable."""
    fs.makedirs(folder, exist_ok=True)
    counts: dict[str, Any] = {"rows": 0, "errors": {}}
    chunk: list[Mapping[str, Any]] = []
    part = 0

    def flush() -> None:
        nonlocal part
        table = pa.Table.from_pylist(chunk, schema=BENCHMARK_ROW_SCHEMA)
        pq.write_table(table, posixpath.join(folder, f"part-{part:05d}.parquet"), filesystem=fs)
        part += 1
        chunk.clear()

    for row in rows:
        chunk.append(row)
        counts["rows"] += 1
        if row["error"]:
            reason = error_reason(row["error"])
            counts["errors"][reason] = counts["errors"].get(reason, 0) + 1
        if len(chunk) == ROWS_PER_FILE:
            flush()
    if chunk or part == 0:
        flush()
    return counts


def files_signature(path: str) -> list[tuple[str, int | None, str | None]]:
    """(relative name, size, modification time) of the files at a path (a file or a folder, local or fsspec URL):
    enough to tell a rebuilt data set or retrained model at the same path from the old one."""
    fs, fs_path = fsspec.core.url_to_fs(path)
    files = fs.find(fs_path, detail=True) if fs.isdir(fs_path) else {fs_path: fs.info(fs_path)}
    return sorted(
        (posixpath.relpath(name, fs_path), info.get("size"),
         str(info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""))
        for name, info in files.items()
    )


def source_fingerprint(spec: TaskSpec, benchmark: BenchmarkConfig) -> dict[str, Any]:
    """What decides a benchmark table: the source and, for a local copy, its files (a rebuilt copy at the same path
    must not reuse an old table)."""
    source: dict[str, Any] = {"task": spec.name, "limit": benchmark.limit}
    if benchmark.path is None:
        return {**source, "hub": [spec.hub_id, spec.hub_config, spec.hub_split]}
    return {**source, "path": benchmark.path, "format": benchmark.format, "files": files_signature(benchmark.path)}
