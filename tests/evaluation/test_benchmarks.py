"""Unit tests of engine.evaluation.benchmarks: every source format, and every broken record as a counted error row."""

from __future__ import annotations

import json

import datasets
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.config import BenchmarkConfig
from engine.evaluation import benchmarks
from engine.evaluation.benchmarks import (
    BENCHMARK_ROW_SCHEMA,
    benchmark_rows,
    error_reason,
    record_options,
    source_fingerprint,
    write_table,
)
from engine.evaluation.tasks import RecordError, get_task
from tests.fixtures import png_bytes

PNG = png_bytes()


def vqa_record(index: int, **fields) -> dict:
    record = {"id": f"q{index}", "image": PNG, "input": f"Question {index}?", "label": "yes", "answer_type": "CLOSED"}
    return {**record, **fields}


def rows_of(task: str, path, data_format: str = "parquet", limit: int | None = None) -> list[dict]:
    config = BenchmarkConfig(task=task, path=str(path), format=data_format, limit=limit)
    return list(benchmark_rows(get_task(task), config))


def errors_by_id(rows: list[dict]) -> dict[str, str | None]:
    return {row["example_id"]: row["error"] and error_reason(row["error"]) for row in rows}


def test_parquet_records_keep_order_ids_and_fields(tmp_path):
    path = tmp_path / "bench.parquet"
    pq.write_table(pa.Table.from_pylist([vqa_record(0), vqa_record(1, answer_type="open", label="Left lung")]), path)
    rows = rows_of("vqa_rad", path)
    assert [(row["example_id"], row["example_index"]) for row in rows] == [("q0", 0), ("q1", 1)]
    assert rows[1]["answer_type"] == "OPEN" and rows[1]["label"] == "Left lung"
    assert rows[0]["image"] == PNG and rows[0]["error"] is None
    assert set(rows[0]) == set(BENCHMARK_ROW_SCHEMA.names)


def test_folder_of_parquet_files_is_read_in_name_order_with_one_numbering(tmp_path):
    for part, indexes in (("b", (2, 3)), ("a", (0, 1))):
        pq.write_table(pa.Table.from_pylist([vqa_record(i) for i in indexes]), tmp_path / f"{part}.parquet")
    rows = rows_of("slake", tmp_path)
    assert [(row["example_id"], row["example_index"]) for row in rows] == [(f"q{i}", i) for i in range(4)]


def test_broken_records_become_error_rows(tmp_path):
    records = [
        vqa_record(0),
        vqa_record(1, input=None),
        vqa_record(2, label=""),
        vqa_record(3, answer_type="maybe"),
        vqa_record(4, image=None),
        vqa_record(5, image=b""),
        vqa_record(6, image=b"not an image"),  # decoded (and refused) later, by the inference actor
    ]
    path = tmp_path / "bench.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    rows = rows_of("vqa_rad", path)
    assert errors_by_id(rows) == {"q0": None, "q1": "missing_field", "q2": None, "q3": "bad_answer_type",
                                  "q4": "missing_field", "q5": "empty_image", "q6": None}
    assert rows[2]["label"] == ""  # an empty label is scored (a miss), as the official evaluation counts it
    # What could be read is kept: a record without an image still has its label, so it is scored as unanswered.
    assert rows[4]["label"] == "yes" and rows[1]["input"] is None


def test_jsonl_records_with_image_files_and_broken_lines(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(PNG)
    (tmp_path.parent / "outside.png").write_bytes(PNG)
    lines = [
        json.dumps({"id": "ok", "image_path": "images/a.png", "input": "Q?", "label": "no", "answer_type": "CLOSED"}),
        json.dumps({"id": "gone", "image_path": "images/b.png", "input": "Q?", "label": "no", "answer_type": "OPEN"}),
        json.dumps({"id": "escape", "image_path": "../outside.png", "input": "Q?", "label": "no",
                    "answer_type": "OPEN"}),
        '{"id": "cut", "input": ',
        "",
        '["not", "an", "object"]',
    ]
    path = tmp_path / "bench.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rows = rows_of("demo_vqa", path, "jsonl")
    assert errors_by_id(rows) == {"ok": None, "gone": "missing_image", "escape": "path_escape",
                                  "000003": "malformed_json", "000004": "malformed_json"}
    assert rows[0]["image"] == PNG


def test_demo_benchmark_in_both_formats_gives_the_same_rows(tmp_path):
    from tests.conftest import load_tool

    out = tmp_path / "demo"
    assert load_tool("make_demo_data").main(["--out", str(out), "--train", "0", "--benchmark", "6",
                                             "--seed-tasks", "0", "--no-real"]) == 0
    from_parquet = rows_of("demo_vqa", out / "benchmark" / "demo_vqa.parquet")
    from_jsonl = rows_of("demo_vqa", out / "benchmark" / "demo_vqa.jsonl", "jsonl")
    assert from_parquet == from_jsonl
    assert len(from_parquet) == 6 and all(row["error"] is None for row in from_parquet)


def image_dataset(records: list[dict]) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "input": datasets.Value("string"),
                                  "label": datasets.Sequence(datasets.Value("string"))})
    return datasets.Dataset.from_list(records, features=features)


def test_hf_disk_copy_with_image_feature_and_splits(tmp_path):
    records = [{"image": {"bytes": PNG, "path": None}, "input": "Ingredients?", "label": ["rice", "egg"]},
               {"image": {"bytes": PNG, "path": None}, "input": "Ingredients?", "label": []}]
    datasets.DatasetDict({"train": image_dataset(records[:1]), "test": image_dataset(records)}).save_to_disk(
        str(tmp_path / "copy"))
    rows = rows_of("foodseg103", tmp_path / "copy", "hf_disk")
    assert [(row["example_id"], json.loads(row["label"]), row["image"]) for row in rows] == [
        ("000000", ["rice", "egg"], PNG), ("000001", [], PNG)]


def test_hub_copy_is_loaded_by_id_subset_and_split(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return image_dataset([{"image": {"bytes": PNG, "path": None}, "input": "Ingredients?", "label": ["rice"]}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = list(benchmark_rows(get_task("nutrition5k"), BenchmarkConfig(task="nutrition5k")))
    assert calls == [("AdaptLLM/food-VQA-benchmark", "Nutrition5K", "test")]
    assert json.loads(rows[0]["label"]) == ["rice"] and rows[0]["error"] is None


def test_task_without_hub_copy_needs_a_path():
    with pytest.raises(ValueError, match="no hub copy"):
        list(benchmark_rows(get_task("demo_vqa"), BenchmarkConfig(task="demo_vqa")))


def test_limit_and_repeated_ids(tmp_path):
    path = tmp_path / "bench.parquet"
    pq.write_table(pa.Table.from_pylist([vqa_record(0), vqa_record(0), vqa_record(2), vqa_record(3)]), path)
    rows = rows_of("vqa_rad", path, limit=3)
    assert [row["example_id"] for row in rows] == ["q0", "q0#1", "q2"]


def test_multiple_choice_options_and_labels(tmp_path):
    records = [
        {"image": PNG, "input": "Which?", "label": "B", "A": "x", "B": "y", "C": "z", "D": "w"},
        {"image": PNG, "input": "Which?", "label": "B"},
    ]
    path = tmp_path / "pmc.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    rows = rows_of("pmc_vqa", path)
    assert json.loads(rows[0]["options"]) == {"A": "x", "B": "y", "C": "z", "D": "w"}
    assert error_reason(rows[1]["error"]) == "missing_field" and rows[1]["options"] is None
    assert record_options({"options": ["x", "y"]}) == {"A": "x", "B": "y"}
    assert record_options({"options": '{"1": "x"}'}) == {"1": "x"}
    with pytest.raises(RecordError, match="bad_options"):
        record_options({"options": "x or y"})


def test_food101_labels_become_option_numbers(tmp_path):
    records = [{"image": PNG, "input": "Which dish?", "label": "apple_pie"},
               {"image": PNG, "input": "Which dish?", "label": "pizza margherita"}]
    path = tmp_path / "food101.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    rows = rows_of("food101", path)
    assert rows[0]["label"] == "0" and rows[0]["error"] is None
    assert rows[1]["label"] is None and error_reason(rows[1]["error"]) == "unknown_label"


def test_write_table_splits_files_and_counts_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarks, "ROWS_PER_FILE", 2)
    path = tmp_path / "bench.parquet"
    pq.write_table(pa.Table.from_pylist([vqa_record(i, input=None if i == 3 else "Q?") for i in range(5)]), path)
    fs = fsspec.filesystem("file")
    counts = write_table(benchmark_rows(get_task("vqa_rad"), BenchmarkConfig(task="vqa_rad", path=str(path))),
                         str(tmp_path / "table"), fs)
    assert counts == {"rows": 5, "errors": {"missing_field": 1}}
    files = sorted(p.name for p in (tmp_path / "table").iterdir())
    assert files == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    table = pq.read_table(tmp_path / "table")
    assert table.schema.equals(BENCHMARK_ROW_SCHEMA) and table.column("example_index").to_pylist() == list(range(5))


def test_empty_benchmark_still_gets_a_readable_table(tmp_path):
    counts = write_table(iter([]), str(tmp_path / "table"), fsspec.filesystem("file"))
    assert counts == {"rows": 0, "errors": {}}
    assert pq.read_table(tmp_path / "table").num_rows == 0


def test_fingerprint_follows_the_local_files(tmp_path):
    path = tmp_path / "bench.parquet"
    pq.write_table(pa.Table.from_pylist([vqa_record(0)]), path)
    config = BenchmarkConfig(task="vqa_rad", path=str(path))
    before = source_fingerprint(get_task("vqa_rad"), config)
    assert source_fingerprint(get_task("vqa_rad"), config) == before
    pq.write_table(pa.Table.from_pylist([vqa_record(0), vqa_record(1)]), path)
    assert source_fingerprint(get_task("vqa_rad"), config) != before
    hub = source_fingerprint(get_task("vqa_rad"), BenchmarkConfig(task="vqa_rad", limit=5))
    assert hub == {"task": "vqa_rad", "limit": 5, "hub": ["AdaptLLM/biomed-VQA-benchmark", "VQA_RAD", "test"]}
