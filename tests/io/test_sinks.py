"""Exports and Parquet writing (engine/io/sinks.py), checked with the clients that read them.

Real clients: `datasets` (load_dataset "parquet", streaming and not, load_from_disk) and pyarrow. LLaMA-Factory is not
installed here (its pins conflict with this environment's transformers): its dataset_info.json entry and image paths
are checked by format, with its own path rule (an image path is joined to `media_dir`, which defaults to
`dataset_dir`: LLaMA-Factory 0.9.5, data/converter.py `_find_medias`, hparams/data_args.py).
"""

from __future__ import annotations

import io
import json
import os
import threading
from functools import partial
from pathlib import Path

import datasets
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from engine.cli import main
from engine.io.sinks import (
    ExportRefused,
    export_hf_disk,
    export_llama_factory,
    write_parquet,
)
from engine.records import EXAMPLE_SCHEMA
from engine.training.mixture import single_stage
from tests.fixtures import png_bytes

COLOURS = ((220, 30, 30), (30, 200, 30), (30, 30, 220))


def instruction_rows(count: int) -> list[dict]:
    """Rows in the instruction-set schema, as compose orders them: the caption exchange, and for three rows in four
    a synthetic exchange after it."""
    rows = []
    for index in range(count):
        messages = [{"role": "user", "content": "<image>\nDescribe the image."},
                    {"role": "assistant", "content": f"A shape on a plain background, number {index}."}]
        if index % 4 != 3:
            messages += [{"role": "user", "content": f"What colour is shape {index}?"},
                         {"role": "assistant", "content": "It is filled with red. Therefore, the answer is red."}]
        rows.append({"id": f"row-{index}", "source_id": f"row-{index}", "messages": messages,
                     "kind": "caption" if index % 4 == 3 else "caption+synthetic",
                     "images": [{"bytes": png_bytes(COLOURS[index % 3], size=32), "path": None}]})
    return rows


def write_instruction_set(folder: Path, count: int) -> str:
    folder.mkdir(parents=True)
    write_parquet(pa.Table.from_pylist(instruction_rows(count), schema=EXAMPLE_SCHEMA), str(folder / "part-0.parquet"))
    return str(folder)


def load_parquet(folder: Path, **kwargs):
    return datasets.load_dataset("parquet", data_files=str(folder / "*.parquet"), split="train",
                                 cache_dir=str(folder.parent / "hf-cache"), **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Parquet sets


def test_an_empty_set_opens_in_pyarrow_and_streams_in_datasets(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    write_parquet(EXAMPLE_SCHEMA.empty_table(), str(empty / "empty.parquet"))
    assert pq.read_table(empty / "empty.parquet").schema == EXAMPLE_SCHEMA
    # Written with pq.write_table (one empty row group), this raised "ArrowInvalid: BatchSize must be greater than 0".
    assert list(load_parquet(empty, streaming=True)) == []
    # datasets itself cannot build an in-memory split of zero rows, from any file format (its arrow_reader skips
    # zero-row files, then refuses the split; datasets PR #8401 is open): this assertion marks that limit and fails
    # once a datasets release lifts it, so the README's note can go.
    with pytest.raises(ValueError, match="corresponds to no data"):
        load_parquet(empty)


def test_the_parquet_set_loads_its_images_as_datasets_images(tmp_path):
    # Before, `images` was a list of plain binary in every client; its schema metadata now makes datasets decode it.
    loaded = load_parquet(Path(write_instruction_set(tmp_path / "instructions", 3)))
    assert loaded.features["images"] == datasets.List(datasets.Image())
    assert [row["images"][0].getpixel((0, 0)) for row in loaded] == list(COLOURS)


def test_hf_disk_export_holds_datasets_images_and_survives_an_empty_set(tmp_path):
    instructions = write_instruction_set(tmp_path / "instructions", 5)
    assert export_hf_disk(instructions, tmp_path / "hf") == 5
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    assert loaded.features["images"] == datasets.List(datasets.Image())
    assert isinstance(loaded[0]["images"][0], Image.Image)

    empty = tmp_path / "empty"
    empty.mkdir()
    write_parquet(EXAMPLE_SCHEMA.empty_table(), str(empty / "empty.parquet"))
    assert export_hf_disk(str(empty), tmp_path / "hf-empty") == 0  # crashed before
    loaded = datasets.load_from_disk(str(tmp_path / "hf-empty"))
    assert len(loaded) == 0 and loaded.features["images"] == datasets.List(datasets.Image())


# ---------------------------------------------------------------------------------------------------------------------
# LLaMA-Factory


def llama_factory_data_folder(root: Path) -> Path:
    """A LLaMA-Factory data/ folder with an entry of its own, as the project ships it."""
    data = root / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"mllm_demo": {"file_name": "mllm_demo.json",
                                                                      "formatting": "sharegpt"}}))
    return data


def resolve_like_llama_factory(dataset_dir: Path, image: str) -> Path:
    # _find_medias: os.path.join(media_dir, image) when that is a file; media_dir defaults to dataset_dir
    return Path(os.path.join(dataset_dir, image))


def test_export_merges_into_llama_factorys_data_folder_and_its_images_resolve_there(tmp_path):
    instructions = write_instruction_set(tmp_path / "instructions", 12)
    data = llama_factory_data_folder(tmp_path)
    expand = partial(single_stage, seed=0)
    assert export_llama_factory(instructions, data, "run_a", expand) == 12
    assert export_llama_factory(instructions, data, "run_b", expand) == 12  # a second run shares the folder
    info = json.loads((data / "dataset_info.json").read_text())
    assert list(info) == ["mllm_demo", "run_a", "run_b"]  # the folder's own entry survives
    assert info["run_b"]["file_name"] == "run_b.json" and info["run_b"]["formatting"] == "sharegpt"
    for name in ("run_a", "run_b"):
        records = json.loads((data / info[name]["file_name"]).read_text())
        for record in records:
            assert record["images"][0].startswith(f"{name}_images/")
            assert resolve_like_llama_factory(data, record["images"][0]).is_file()
    assert not [path for path in data.iterdir() if path.name.endswith(".tmp")]  # written through renames


def test_the_export_is_the_single_stage_mixture_adapt_train_builds(tmp_path):
    rows = instruction_rows(40)
    instructions = write_instruction_set(tmp_path / "instructions", 40)
    export_llama_factory(instructions, tmp_path / "lf", "mix", partial(single_stage, seed=3))
    records = json.loads((tmp_path / "lf" / "mix.json").read_text())
    assert [record["messages"] for record in records] == [single_stage(row, 3)[0]["messages"] for row in rows]
    caption_first = [record["messages"][0]["content"].endswith("Describe the image.") for record in records
                     if len(record["messages"]) == 4]
    assert any(caption_first) and not all(caption_first)  # before: the caption was always first
    for record, row in zip(records, rows, strict=True):
        assert (tmp_path / "lf" / record["images"][0]).read_bytes() == row["images"][0]["bytes"]
        assert record["messages"][0]["content"].startswith("<image>\n")  # the image leads the conversation


def write_run(root: Path, count: int) -> Path:
    """A run directory holding an instruction set."""
    write_instruction_set(root / "synthesis" / "instructions", count)
    return root


def test_mixture_none_writes_the_rows_as_synthesized_for_adapt_train(tmp_path, capsys):
    run = write_run(tmp_path / "run", 8)
    out = tmp_path / "lf"
    assert main(["export", str(run), "--out", str(out), "--mixture", "none"]) == 0
    records = json.loads((out / "adapt_instructions.json").read_text())
    assert [record["messages"] for record in records] == [row["messages"] for row in instruction_rows(8)]
    assert main(["export", str(run), "--out", str(out), "--name", "b", "--mixture", "none", "--seed", "1"]) == 2
    assert "--seed" in capsys.readouterr().err


def test_a_name_clash_is_refused_unless_overwritten(tmp_path, capsys):
    write_run(tmp_path / "run", 3)
    data = llama_factory_data_folder(tmp_path)
    export = ["export", str(tmp_path / "run"), "--out", str(data), "--name", "mllm_demo"]
    assert main(export) == 2  # the folder's own entry is not replaced
    error = capsys.readouterr().err
    assert "'mllm_demo'" in error and str(data / "dataset_info.json") in error and "--overwrite" in error
    assert not (data / "mllm_demo.json").exists()

    assert main([*export[:-1], "mine"]) == 0
    (data / "mine_images" / "stale.png").write_bytes(b"old")
    assert main([*export[:-1], "mine"]) == 2
    assert main([*export[:-1], "mine", "--overwrite"]) == 0
    assert not (data / "mine_images" / "stale.png").exists()  # a replaced export keeps none of the old images
    assert main([*export[:-1], "../escape"]) == 2
    assert "--name" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), "--to", "hf-disk", "--out", str(tmp_path / "hf"), "--seed", "1"]) == 2


def failing_after(rows: int):
    """A mixture that fails on its `rows`-th row, after the export has written the images of the rows before it."""
    seen = []

    def conversations(row: dict) -> list[dict]:
        seen.append(row["id"])
        if len(seen) > rows:
            raise RuntimeError("the mixture failed")
        return single_stage(row, seed=0)
    return conversations


def test_an_overwrite_that_fails_midway_keeps_the_old_entry_and_its_images(tmp_path):
    data = llama_factory_data_folder(tmp_path)
    export_llama_factory(write_instruction_set(tmp_path / "old", 3), data, "mine", partial(single_stage, seed=0))
    before = {path.relative_to(data): path.read_bytes() for path in data.rglob("*") if path.is_file()}
    with pytest.raises(RuntimeError, match="the mixture failed"):
        export_llama_factory(write_instruction_set(tmp_path / "new", 8), data, "mine", failing_after(2),
                             overwrite=True)
    # Before, the old images were deleted first: the old entry's JSON named images that were gone.
    assert {path.relative_to(data): path.read_bytes() for path in data.rglob("*") if path.is_file()} == before
    records = json.loads((data / "mine.json").read_text())
    assert all(resolve_like_llama_factory(data, image).is_file() for record in records for image in record["images"])


def test_concurrent_exports_into_one_folder_keep_every_entry(tmp_path):
    instructions = write_instruction_set(tmp_path / "instructions", 4)
    data = llama_factory_data_folder(tmp_path)
    threads = [threading.Thread(target=export_llama_factory, args=(instructions, data, f"run_{i}",
                                                                   partial(single_stage, seed=0)))
               for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(json.loads((data / "dataset_info.json").read_text())) == {"mllm_demo", *(f"run_{i}" for i in range(4))}


def test_the_instruction_set_may_be_on_object_storage(tmp_path):
    # fsspec's in-memory filesystem stands in for s3:// or gs:// (tests/test_object_storage.py runs a real S3 server)
    fs = fsspec.filesystem("memory")
    with fs.open("/sinks-test/instructions/part-0.parquet", "wb") as file:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(instruction_rows(3), schema=EXAMPLE_SCHEMA), buffer)
        file.write(buffer.getvalue())
    assert export_llama_factory("memory://sinks-test/instructions", tmp_path / "lf", "remote",
                                partial(single_stage, seed=0)) == 3
    assert export_hf_disk("memory://sinks-test/instructions", tmp_path / "hf") == 3
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset_info.json").write_text("{")
    with pytest.raises(ExportRefused, match="not valid JSON"):
        export_llama_factory("memory://sinks-test/instructions", tmp_path / "bad", "remote",
                             partial(single_stage, seed=0))
