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


# ------------------------------------------------------------------------------------- the release's record shapes

RECIPE = "Generate a recipe for this delicious food."
CAPTION = "Mix the flour.\n\nBake at 180 C for 20 minutes. "


def official(image, instruction: str = f"<image>{RECIPE}", caption: str = CAPTION, **extra) -> dict:
    return {"images": image, "messages": [{"role": "user", "content": instruction},
                                          {"role": "assistant", "content": caption}], **extra}


def llava(image, instruction: str = f"<image>\n{RECIPE}", caption: str = CAPTION, **extra) -> dict:
    return {"image": image, "conversations": [{"from": "human", "value": instruction},
                                              {"from": "gpt", "value": caption}], **extra}


def write_records(folder, records: list, as_array: bool, name: str = "pairs") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    if as_array:
        path = folder / f"{name}.json"
        path.write_text(json.dumps(records, indent=4))
    else:
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


@pytest.mark.parametrize("as_array", [True, False])
@pytest.mark.parametrize("shape", [official, llava])
def test_chat_shaped_records_become_rows_with_their_instruction(tmp_path, shape, as_array):
    # The release lists its image; LLaVA records name it (a list of one is read too).
    records = [shape(["a.jpg"]), shape("b.jpg", id="named")]
    path = write_records(tmp_path / "set", records, as_array)
    rows = read_all("jsonl", path, str(tmp_path / "set"))
    assert [row["id"] for row in rows] == [f"{rows[0]['shard']}:0", "named"]
    instruction = f"<image>{RECIPE}" if shape is official else f"<image>\n{RECIPE}"
    for row, image in zip(rows, ("a.jpg", "b.jpg")):
        assert row["problem_reason"] is None and row["image_path"] == image and row["image"] is None
        assert row["instruction"] == instruction  # as written; compose removes the placeholder
        assert row["caption"] == CAPTION  # verbatim: line breaks and the trailing space kept


@pytest.mark.parametrize(("record", "detail"), [
    (official(["a.jpg"], caption=None) | {"messages": [{"role": "user", "content": "x"}]}, "got roles ['user']"),
    ({"images": ["a.jpg"], "messages": "not a list"}, "got roles None"),
    (official(["a.jpg", "b.jpg"]), "exactly one image, got 2"),
    (official([]), "exactly one image, got 0"),
    (llava(None), "exactly one image, got 0"),
    ({"image": "a.jpg", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
     "got roles ['gpt', 'human']"),
    (official(["a.jpg"]) | {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                                         {"role": "user", "content": "q2"}]}, "one user turn and one assistant turn"),
])
def test_malformed_chat_records_are_counted_with_a_reason(tmp_path, record, detail):
    path = write_records(tmp_path / "set", [record | {"id": "bad"}, official(["ok.jpg"])], as_array=False)
    broken, fine = read_all("jsonl", path, str(tmp_path / "set"))
    assert broken["problem_reason"] == "malformed_record" and detail in broken["problem_detail"]
    assert broken["id"] == "bad"  # the quarantine names the record
    assert fine["problem_reason"] is None


def test_a_chat_record_without_an_answer_text_has_no_caption(tmp_path):
    path = write_records(tmp_path / "set", [official(["a.jpg"], caption=None)], as_array=False)
    (row,) = read_all("jsonl", path, str(tmp_path / "set"))
    assert (row["problem_reason"], row["problem_detail"]) == ("missing_field", "no 'caption'")


def test_flat_records_carry_an_optional_instruction(tmp_path):
    records = [{"image_path": "a.png", "caption": "c", "instruction": "Name the dish."},
               {"image_path": "a.png", "caption": "c"},
               {"image_path": "a.png", "caption": "c", "instruction": 3}]
    rows = read_all("jsonl", write_records(tmp_path / "set", records, as_array=True), str(tmp_path / "set"))
    assert [row["instruction"] for row in rows] == ["Name the dish.", None, None]
    assert rows[2]["problem_reason"] == "malformed_record"


def test_a_json_array_keeps_one_row_per_element_and_one_row_when_it_does_not_parse(tmp_path):
    path = write_records(tmp_path / "set", [official(["a.jpg"]), ["not", "an", "object"], 7], as_array=True)
    rows = read_all("jsonl", path, str(tmp_path / "set"))
    assert [(row["row"], row["problem_reason"], row["problem_detail"]) for row in rows] == [
        (0, None, None), (1, "malformed_json", "element 1: not an object"),
        (2, "malformed_json", "element 2: not an object")]
    broken = tmp_path / "broken" / "cut.json"
    broken.parent.mkdir()
    broken.write_text('  \n[{"images": ["a.jpg"], "messages": [')
    (row,) = read_all("jsonl", str(broken), str(broken.parent))
    assert row["problem_reason"] == "malformed_json" and row["problem_detail"].startswith("JSON array, line 2:")


def test_chat_shaped_parquet_rows_with_image_bytes(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([official([png_bytes()])]), folder / "a.parquet")
    (row,) = read_all("parquet", str(folder), str(folder))
    assert row["image"] == png_bytes() and row["instruction"] == f"<image>{RECIPE}" and row["caption"] == CAPTION


def test_validation_keeps_the_caption_verbatim(tmp_path):
    from engine.io.images import ImageLimits
    from engine.io.validation import validate_row

    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "a.png").write_bytes(png_bytes())
    path = write_records(tmp_path / "set", [official(["a.png"]), official(["a.png"], caption=" \n ")], as_array=True)
    good, empty = (validate_row(row, str(tmp_path / "set"), ImageLimits(), 8192)
                   for row in read_all("jsonl", path, str(tmp_path / "set")))
    assert good["problem_reason"] is None and good["caption"] == CAPTION and good["instruction"] == f"<image>{RECIPE}"
    assert empty["problem_reason"] == "empty_caption"
