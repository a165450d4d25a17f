"""tools/make_demo_data.py: deterministic builds, the data contracts, and captions and answers true to the drawings."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from engine.records import BENCHMARK_SCHEMA, CAPTION_SCHEMA, SEED_TASK_SCHEMA
from tests.conftest import load_tool

demo = load_tool("make_demo_data")

SEED = 7
SMALL = ["--seed", str(SEED), "--train", "24", "--benchmark", "26", "--seed-tasks", "8", "--shard-size", "10"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> tuple[Path, Path]:
    first, second = tmp_path_factory.mktemp("first") / "demo", tmp_path_factory.mktemp("second") / "demo"
    for out in (first, second):
        assert demo.main(["--out", str(out), *SMALL]) == 0
    return first, second


@pytest.fixture(scope="module")
def out(builds) -> Path:
    return builds[0]


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def caption_rows(out: Path) -> list[dict]:
    return [row for shard in sorted((out / "captions").glob("part-*.parquet")) for row in read_rows(shard)]


def test_two_builds_with_one_seed_are_identical(builds):
    first, second = builds
    assert caption_rows(first) == caption_rows(second)
    for relative in ("benchmark/demo_vqa.parquet", "seed_tasks/seed_tasks.parquet", "real/part-00000.parquet"):
        assert read_rows(first / relative) == read_rows(second / relative)
    manifests = [json.loads((out / demo.MANIFEST_NAME).read_text()) for out in builds]
    assert manifests[0]["file_sets"] == manifests[1]["file_sets"]


def test_another_seed_draws_other_images():
    assert demo.build_captions(SEED, 3) != demo.build_captions(SEED + 1, 3)


def test_a_smaller_build_is_a_prefix_of_a_larger_one():
    assert demo.build_captions(SEED, 4) == demo.build_captions(SEED, 9)[:4]


def test_parquet_files_follow_the_data_contracts(out):
    shards = sorted((out / "captions").glob("part-*.parquet"))
    assert [pq.read_metadata(shard).num_rows for shard in shards] == [10, 10, 4]
    expected = {
        "captions/part-00000.parquet": CAPTION_SCHEMA,
        "benchmark/demo_vqa.parquet": BENCHMARK_SCHEMA,
        "seed_tasks/seed_tasks.parquet": SEED_TASK_SCHEMA,
        "real/part-00000.parquet": CAPTION_SCHEMA,
    }
    for relative, schema in expected.items():
        assert pq.read_schema(out / relative).equals(schema), relative
    ids = [row["id"] for row in caption_rows(out)]
    assert ids[:2] == ["demo-train-000000", "demo-train-000001"] and len(set(ids)) == 24


@pytest.mark.parametrize(
    ("jsonl", "parquet", "text_key"),
    [
        ("captions_jsonl/captions.jsonl", "captions", "caption"),
        ("benchmark/demo_vqa.jsonl", "benchmark/demo_vqa.parquet", "input"),
        ("real/real.jsonl", "real/part-00000.parquet", "caption"),
    ],
)
def test_jsonl_sets_hold_the_same_rows_with_relative_image_paths(out, jsonl, parquet, text_key):
    folder = (out / jsonl).parent.resolve()
    rows = {row["id"]: row for row in (caption_rows(out) if parquet == "captions" else read_rows(out / parquet))}
    records = read_jsonl(out / jsonl)
    assert [record["id"] for record in records] == list(rows)
    for record in records:
        assert not Path(record["image_path"]).is_absolute()
        image = (folder / record["image_path"]).resolve()
        assert image.is_relative_to(folder) and image.is_file()
        assert image.read_bytes() == rows[record["id"]]["image"]
        assert record[text_key] == rows[record["id"]][text_key]


def test_captions_agree_with_the_attributes(out):
    for row in caption_rows(out):
        meta, caption = json.loads(row["meta"]), row["caption"].lower()
        shape = meta["shape"] + ("s" if meta["count"] > 1 else "")
        assert f"{meta['colour']} {shape}" in caption
        assert any(f"{word} {meta['colour']}" in caption for word in demo.SIZE_WORDS[meta["size"]])
        assert meta["background"] in caption and ("speckled" in caption) == (meta["texture"] == "speckled")
        if meta["count"] == 1:
            assert demo.REGION_PHRASES[meta["region"]] in caption
            assert not any(word in caption.split() for word in ("two", "three"))
        else:
            assert demo.NUMBER_WORDS[meta["count"]] in caption.split()


def test_single_shapes_sit_inside_the_region_their_caption_names(out):
    third = demo.IMAGE_SIZE / 3
    for row in caption_rows(out):
        meta = json.loads(row["meta"])
        if meta["count"] == 1:
            x, y = meta["centres"][0]
            assert demo.REGIONS[(int(y // third), int(x // third))] == meta["region"]


def test_images_are_112_pixel_rgb_pngs(out):
    for row in caption_rows(out)[:5]:
        image = Image.open(io.BytesIO(row["image"]))
        assert (image.format, image.size, image.mode) == ("PNG", (112, 112), "RGB")


def expected_answer(item) -> str:
    """The label recomputed from the scene alone, reading the asked value out of the question text."""
    truth = {
        "colour": item.scene.colour,
        "shape": item.scene.shape,
        "size": item.scene.size,
        "count": demo.NUMBER_WORDS[item.scene.count],
    }[item.kind]
    if item.answer_type == "OPEN":
        return truth
    words = item.question.rstrip("?").split()
    asked = [value for value in demo.vocabulary_of(item.kind) if value in words]
    assert len(asked) == 1, item.question
    return "yes" if asked[0] == truth else "no"


def test_benchmark_answers_follow_from_the_scene(out):
    items = demo.build_benchmark(SEED, 26)
    assert [(item.id, item.question, item.label, item.answer_type, item.png) for item in items] == [
        (row["id"], row["input"], row["label"], row["answer_type"], row["image"])
        for row in read_rows(out / "benchmark" / "demo_vqa.parquet")
    ]
    for item in items:
        assert item.label == expected_answer(item), item


def test_benchmark_mixes_open_and_balanced_closed_questions(out):
    rows = read_rows(out / "benchmark" / "demo_vqa.parquet")
    closed = [row["label"] for row in rows if row["answer_type"] == "CLOSED"]
    assert len(closed) == 13 and len(rows) - len(closed) == 13
    assert abs(closed.count("yes") - closed.count("no")) <= 1 and set(closed) == {"yes", "no"}
    kinds = {item.kind for item in demo.build_benchmark(SEED, 26)}
    assert kinds == set(demo.QUESTION_KINDS)


def test_benchmark_images_are_held_out(out):
    train = caption_rows(out)
    bench = read_rows(out / "benchmark" / "demo_vqa.parquet")
    assert not {row["id"] for row in train} & {row["id"] for row in bench}
    assert not {row["image"] for row in train} & {row["image"] for row in bench}


def test_seed_tasks_pair_precise_and_informative_answers(out):
    rows = read_rows(out / "seed_tasks" / "seed_tasks.parquet")
    assert len(rows) == 8
    for row in rows:
        assert 2 <= len(row["tasks"]) <= 4
        assert len({task["question"] for task in row["tasks"]}) == len(row["tasks"])
        for task in row["tasks"]:
            assert len(task["precise"].split()) <= 2
            assert task["informative"].endswith(".") and task["precise"] in task["informative"].lower()


def test_real_images_decode(out):
    rows = read_rows(out / "real" / "part-00000.parquet")
    assert [row["id"] for row in rows] == [real.id for real in demo.REAL_IMAGES]
    for row in rows:
        Image.open(io.BytesIO(row["image"])).verify()
        assert json.loads(row["meta"])["source_package"] in ("scikit-image", "pydicom")


def test_a_missing_real_file_names_package_and_file(monkeypatch):
    missing = demo.RealImage("real-x", "scikit-image", "skimage", "data/not_shipped.png", "nothing")
    monkeypatch.setattr(demo, "REAL_IMAGES", (missing,))
    with pytest.raises(FileNotFoundError, match=r"scikit-image.*skimage/data/not_shipped\.png"):
        demo.build_real()


def test_rerun_is_a_no_op_and_new_flags_rebuild_without_stale_shards(tmp_path, capsys):
    out = tmp_path / "demo"
    base = ["--out", str(out), "--no-real", "--train", "12", "--benchmark", "2", "--seed-tasks", "1"]
    assert demo.main([*base, "--shard-size", "5"]) == 0
    capsys.readouterr()
    assert demo.main([*base, "--shard-size", "5"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert demo.main([*base, "--shard-size", "10"]) == 0
    assert sorted(path.name for path in (out / "captions").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    manifest = json.loads((out / demo.MANIFEST_NAME).read_text())
    assert manifest["arguments"]["shard_size"] == 10 and "real" not in manifest["file_sets"]


def test_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("someone else's")
    with pytest.raises(SystemExit, match="notes.txt"):
        demo.main(["--out", str(tmp_path), "--no-real", "--train", "1", "--benchmark", "1", "--seed-tasks", "1"])
