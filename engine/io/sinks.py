"""Parquet writing that every reader accepts, and exports of a published instruction set for other trainers.

- `write_parquet`: an empty table becomes a file without row groups (datasets sizes its batches by the first row
  group and fails on an empty one: `ArrowInvalid: BatchSize must be greater than 0`).
- LLaMA-Factory: a ShareGPT-style JSON list ({"id", "messages", "images": [paths]}) with its images in a folder beside
  it, merged as one entry into the folder's dataset_info.json (formatting "sharegpt", role/content tags). All of it
  is written beside its target and renamed into place at the end, so an export that fails (an `--overwrite`
  included) leaves the folder as it was.
- Hugging Face datasets: `save_to_disk` of the instruction set, its `images` column a list of `datasets.Image` (the
  Parquet set's own schema metadata says so: records.EXAMPLE_SCHEMA).
The LLaMA-Factory export streams the Parquet set batch by batch and never holds the whole set in memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from engine.records import image_bytes

IMAGE_SIGNATURES = {b"\x89PNG": "png", b"\xff\xd8\xff": "jpg", b"GIF8": "gif", b"RIFF": "webp", b"BM": "bmp"}
DATASET_INFO = "dataset_info.json"
# LLaMA-Factory looks a dataset up by this name in dataset_info.json; it also names the files, so no path characters.
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
EXPORT_COLUMNS = ["id", "images", "messages"]

Conversations = Callable[[dict[str, Any]], list[dict[str, Any]]]


class ExportRefused(ValueError):
    """An export that would overwrite something, or whose arguments are unusable; the message names what."""


# ---------------------------------------------------------------------------------------------------------------------
# Parquet for every reader


def write_parquet(table: pa.Table, path: str, filesystem: fsspec.AbstractFileSystem | None = None) -> None:
    """Write `table` (schema metadata included) to one Parquet file; an empty table as a file with no row group."""
    with pq.ParquetWriter(path, table.schema, filesystem=filesystem) as writer:
        if table.num_rows:
            writer.write_table(table)


# ---------------------------------------------------------------------------------------------------------------------
# LLaMA-Factory


def image_extension(data: bytes) -> str:
    return next((ext for magic, ext in IMAGE_SIGNATURES.items() if data.startswith(magic)), "bin")


def llama_factory_dataset_info(file_name: str) -> dict[str, Any]:
    """One dataset_info.json entry: a ShareGPT file with OpenAI-style role/content messages and an images column."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }


def _instruction_rows(instructions: str) -> Iterator[dict[str, Any]]:
    fs, path = fsspec.core.url_to_fs(str(instructions))  # a run directory may be on object storage
    for batch in pads.dataset(path, filesystem=fs, format="parquet").to_batches(columns=EXPORT_COLUMNS):
        yield from batch.to_pylist()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder, so two exports into one folder cannot both pass the name check or lose
    each other's dataset_info.json entry."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _sibling(path: Path, suffix: str) -> Path:
    # hidden and named after the process, so a crashed export's leftovers are recognisable and never clash
    return path.with_name(f".{path.name}.{os.getpid()}.{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _staged(*targets: Path) -> Iterator[list[Path]]:
    """Yield a temporary sibling of each target to write into; once the block ends without error, rename them over
    the targets in the order given. A block that raises leaves every target as it was: a failed `--overwrite` keeps
    the old export whole, its JSON and the images it points at."""
    staged = [_sibling(target, "tmp") for target in targets]
    try:
        yield staged
        _swap_in(staged, targets)
    finally:
        for path in staged:
            if path.exists():
                _remove(path)


def _swap_in(staged: list[Path], targets: tuple[Path, ...]) -> None:
    """Rename each staged path over its target. A folder cannot be renamed over a non-empty one, so the old folder
    is moved aside first and removed only after every rename (the new entry in place): only a crash between two
    renames can leave a mismatch."""
    retired = []
    for new, target in zip(staged, targets, strict=True):
        if target.is_dir():
            retired.append(target.rename(_sibling(target, "old")))
        os.replace(new, target)
    for old in retired:
        _remove(old)


def _read_dataset_info(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ExportRefused(f"--out: {path} is not valid JSON ({err}); fix or move it") from None
    if not isinstance(info, dict):
        raise ExportRefused(f"--out: {path} is not a JSON object of dataset entries")
    return info


def _check_name(name: str, out_dir: Path, info: dict[str, Any], overwrite: bool) -> None:
    if not DATASET_NAME.fullmatch(name):
        raise ExportRefused(f"--name: {name!r} is not a usable dataset name (letters, digits, . _ -)")
    clashes = [what for what, present in ((f"an entry {name!r} in {out_dir / DATASET_INFO}", name in info),
                                          (str(out_dir / f"{name}.json"), (out_dir / f"{name}.json").exists()),
                                          (str(out_dir / f"{name}_images"), (out_dir / f"{name}_images").exists()))
               if present]
    if clashes and not overwrite:
        raise ExportRefused(f"--name: {name!r} is taken: {'; '.join(clashes)} (choose another --name, or pass "
                            "--overwrite to replace it)")


def _write_conversations(rows: Iterator[dict[str, Any]], conversations: Conversations, file: Path,
                         images_dir: Path, images_name: str) -> int:
    """Write the conversations as one JSON list into `file` and their images into `images_dir`; the JSON names each
    image by `images_name`, the folder's name once it is in place beside the JSON."""
    images_dir.mkdir()
    count = 0
    with open(file, "w", encoding="utf-8") as out:
        out.write("[")
        for row in rows:
            for conversation in conversations(row):
                paths = []
                for index, data in enumerate(map(image_bytes, conversation["images"])):
                    # ids can hold any character; the file name uses the conversation's position instead
                    image = f"{count:09d}_{index}.{image_extension(data)}"
                    (images_dir / image).write_bytes(data)
                    paths.append(f"{images_name}/{image}")
                record = {"id": conversation["id"], "messages": conversation["messages"], "images": paths}
                out.write(("\n" if count == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
                count += 1
        out.write("\n]\n")
    return count


def export_llama_factory(instructions: str, out_dir: str | Path, name: str, conversations: Conversations,
                         overwrite: bool = False) -> int:
    """Write `{out_dir}/{name}.json` and `{out_dir}/{name}_images/`, then add the entry `name` to
    `{out_dir}/dataset_info.json` (created if missing, other entries kept); return the conversation count.

    `conversations` turns an instruction row into the conversations to write (a training mixture). Image paths
    are relative to `out_dir`; LLaMA-Factory resolves them against its `media_dir`, which defaults to its
    `dataset_dir`, so they load when `out_dir` is LLaMA-Factory's data/ folder or the `dataset_dir` of a run. A
    name already used in the folder is refused (ExportRefused) unless `overwrite`; an overwrite that fails keeps
    the old entry, its JSON and its images.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info_path = out_dir / DATASET_INFO
    images_dir, file = out_dir / f"{name}_images", out_dir / f"{name}.json"
    with _locked(out_dir):
        _check_name(name, out_dir, _read_dataset_info(info_path), overwrite)
        # Images first, the entry last: a new entry never names a file that is not yet in place.
        with _staged(images_dir, file, info_path) as (staged_images, staged_file, staged_info):
            count = _write_conversations(_instruction_rows(instructions), conversations, staged_file, staged_images,
                                         images_dir.name)
            # Read again under the lock just before the renames: entries written meanwhile by hand are kept too.
            info = {**_read_dataset_info(info_path), name: llama_factory_dataset_info(file.name)}
            staged_info.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return count


# ---------------------------------------------------------------------------------------------------------------------
# Hugging Face datasets


def export_hf_disk(instructions: str, out_dir: str | Path) -> int:
    """`datasets.Dataset.save_to_disk` of the instruction set, `images` as a list of `datasets.Image`; return the
    example count. An empty set is saved as one empty shard (`save_to_disk` writes none for zero rows, and
    `load_from_disk` then fails), and built without `load_dataset`, which cannot make a split of zero rows."""
    import datasets

    fs, path = fsspec.core.url_to_fs(str(instructions))
    parquet = pads.dataset(path, filesystem=fs, format="parquet")
    features = datasets.Features.from_arrow_schema(parquet.schema)  # `images` a list of Image: records.EXAMPLE_SCHEMA
    if parquet.count_rows() == 0:
        dataset = datasets.Dataset.from_dict({column: [] for column in features}, features=features)
    else:
        files = [fs.unstrip_protocol(file) for file in parquet.files]
        dataset = datasets.load_dataset("parquet", data_files=files, features=features, split="train",
                                        storage_options=fs.storage_options)
    dataset.save_to_disk(str(out_dir), num_shards=1 if len(dataset) == 0 else None)
    return len(dataset)
