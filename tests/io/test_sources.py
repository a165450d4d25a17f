"""Shard readers: every record becomes one row, broken ones included; ids are stable; paths cannot escape."""

from __future__ import annotations

import io
import json
import tarfile

import datasets
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.io.images import Problem
from engine.io.sources import dataset_root, list_shards, read_shard, resolve_image_path, shard_name
from tests.fixtures import png_bytes, write_corrupt_jsonl_dataset


def read_all(data_format: str, path: str, root: str) -> list[dict]:
    rows = []
    for shard_path in list_shards(path, data_format):
        with fsspec.open(shard_path, "rb") as file:
            rows.extend(read_shard(data_format, file, shard_name(shard_path, root)))
    return rows


def test_jsonl_every_line_is_a_row_and_broken_lines_keep_their_number(tmp_path):
    jsonl = write_corrupt_jsonl_dataset(tmp_path / "set")
    rows = read_all("jsonl", str(jsonl.parent), dataset_root(str(jsonl.parent)))
    assert len(rows) == 12
    broken = {row["row_key"]: (row["problem_reason"], row["problem_detail"]) for row in rows if row["problem_reason"]}
    assert broken["captions.jsonl:9"][0] == "malformed_json" and broken["captions.jsonl:9"][1].startswith("line 10:")
    assert broken["captions.jsonl:10"] == ("malformed_json", "line 11: not an object")
    assert broken["captions.jsonl:8"] == ("missing_field", "no 'caption'")
    assert rows[9]["id"] == "captions.jsonl:9"  # no id could be read: the row key stands in
    assert rows[0]["id"] == "good-1" and rows[0]["image_path"] == "images/good1.png"


def test_parquet_rows_without_id_get_shard_and_row(tmp_path):
    folder = tmp_path / "pq"
    (folder / "part").mkdir(parents=True)
    table = pa.table({"image": [png_bytes(), png_bytes()], "caption": ["one", "two"], "meta": [None, '{"k": 1}']})
    pq.write_table(table, folder / "part" / "a.parquet")
    pq.write_table(pa.table({"caption": ["no image"]}), folder / "b.parquet")
    rows = read_all("parquet", str(folder), str(folder))
    assert [row["id"] for row in rows] == ["b.parquet:0", "part/a.parquet:0", "part/a.parquet:1"]
    assert rows[0]["problem_reason"] == "missing_field"
    assert rows[2]["meta"] == '{"k": 1}' and rows[2]["image"] == png_bytes()
    assert rows == read_all("parquet", str(folder), str(folder))  # stable across reads


def test_memory_filesystem_and_glob(tmp_path):
    fs = fsspec.filesystem("memory")
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": ["m1"], "image": [png_bytes()], "caption": ["in memory"]}), buffer)
    fs.pipe("/mem-set/shard-0.parquet", buffer.getvalue())
    fs.pipe("/mem-set/notes.txt", b"ignored")
    shards = list_shards("memory://mem-set", "parquet")
    assert shards == ["memory:///mem-set/shard-0.parquet"]  # fsspec's canonical form of the URL
    root = dataset_root("memory://mem-set/*.parquet")
    assert root == "memory:///mem-set"
    rows = read_all("parquet", "memory://mem-set/*.parquet", root)
    assert rows[0]["id"] == "m1" and rows[0]["shard"] == "shard-0.parquet"


def test_webdataset_samples_group_by_key(tmp_path):
    path = tmp_path / "shard-000.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [
            ("s/0001.png", png_bytes()),
            ("s/0001.txt", b"first caption"),
            ("s/0002.jpg", png_bytes()),
            ("s/0002.json", json.dumps({"id": "named", "caption": "from json", "source": "x"}).encode()),
            ("s/0003.txt", b"no image here"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rows = read_all("webdataset", str(path), str(tmp_path))
    assert [row["id"] for row in rows] == ["s/0001", "named", "s/0003"]
    assert rows[0]["caption"] == "first caption" and rows[1]["caption"] == "from json"
    assert json.loads(rows[1]["meta"]) == {"source": "x"}
    assert rows[2]["problem_reason"] == "missing_field"


def test_truncated_tar_is_counted_not_raised(tmp_path):
    path = tmp_path / "cut.tar"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("a.txt", "a.png"):
            data = b"x" * 4000
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue()[:2000])
    rows = read_all("webdataset", str(path), str(tmp_path))
    assert rows[-1]["problem_reason"] == "unreadable_shard"


def test_hf_save_to_disk_folder_with_image_feature(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(), "path": None}], "caption": ["hf row"]}, features)
    ds.save_to_disk(str(tmp_path / "hf"))
    rows = read_all("hf_disk", str(tmp_path / "hf"), str(tmp_path / "hf"))
    assert len(rows) == 1 and rows[0]["image"] == png_bytes() and rows[0]["problem_reason"] is None


def test_no_shards_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no parquet shards"):
        list_shards(str(tmp_path), "parquet")


@pytest.mark.parametrize(
    "shard, image_path, expected",
    [
        ("captions.jsonl", "images/a.png", "/data/set/images/a.png"),
        ("sub/captions.jsonl", "../images/a.png", "/data/set/images/a.png"),
        ("sub/captions.jsonl", "./x/../a.png", "/data/set/sub/a.png"),
        ("captions.jsonl", "../outside.png", "path_escape"),
        ("sub/captions.jsonl", "../../etc/passwd", "path_escape"),
        ("captions.jsonl", "/etc/passwd", "path_escape"),
        ("captions.jsonl", "s3://other/bucket.png", "path_escape"),
        ("captions.jsonl", "C:\\Windows\\a.png", "path_escape"),
        ("captions.jsonl", "", "missing_image"),
    ],
)
def test_image_paths_stay_inside_the_root(shard, image_path, expected):
    result = resolve_image_path("/data/set", shard, image_path)
    if isinstance(result, Problem):
        assert result.reason == expected
    else:
        assert result == expected
