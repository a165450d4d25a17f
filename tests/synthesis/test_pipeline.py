"""The synthesis stage on a local Ray: accounting balances, bad rows are quarantined with reasons, outputs load."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from engine.config import ConfigError, RunConfig, load_config
from engine.cli import main
from engine.synthesis.pipeline import SynthesisStage, file_groups, synthesis_fingerprint, with_tuned_synthesizer
from tests.conftest import base_tree, write_config
from tests.fixtures import CORRUPT_EXPECTATIONS, png_bytes, write_corrupt_jsonl_dataset, write_pairs_as

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def rule_based_config(data_path: Path, output_dir: Path, data_format: str = "jsonl") -> RunConfig:
    return RunConfig.model_validate(
        {
            "output_dir": str(output_dir),
            "data": {"path": str(data_path), "format": data_format},
            "synthesis": {"synthesizer": "rule_based"},
            "filter": {"judge": "lexical"},
        }
    )


def read_set(output_dir: Path, name: str) -> list[dict]:
    return pq.read_table(output_dir / "synthesis" / name).to_pylist()


def test_corrupt_inputs_are_quarantined_and_accounting_balances(ray_cluster, tmp_path):
    jsonl = write_corrupt_jsonl_dataset(tmp_path / "set")
    manifest = SynthesisStage(rule_based_config(jsonl.parent, tmp_path / "run")).run()

    assert manifest["rows_in"] == 12  # every line, the malformed ones included
    assert manifest["rows_in"] == (
        manifest["rows_out"] + sum(manifest["rows_dropped"].values()) + sum(manifest["rows_quarantined"].values())
    )
    quarantine = read_set(tmp_path / "run", "quarantine")
    reasons = {row["id"]: row["reason"] for row in quarantine}
    for record_id, reason in CORRUPT_EXPECTATIONS.items():
        if reason is not None:
            assert reasons[record_id] == reason, record_id
    by_key = {row["row_key"]: row for row in quarantine}
    assert by_key["captions.jsonl:9"]["reason"] == "malformed_json"
    assert by_key["captions.jsonl:9"]["detail"].startswith("line 10:")
    assert by_key["captions.jsonl:10"]["detail"] == "line 11: not an object"
    duplicate = by_key["captions.jsonl:11"]
    assert duplicate["reason"] == "duplicate_id" and duplicate["id"] == "good-1"

    examples = read_set(tmp_path / "run", "instructions")
    assert sorted(row["id"] for row in examples) == ["good-1", "good-2"]
    assert manifest["rows_out"] == 2
    for example in examples:
        assert example["messages"][0]["content"].startswith("<image>") and len(example["images"]) == 1


def test_outputs_load_with_datasets(ray_cluster, tmp_path):
    jsonl = write_corrupt_jsonl_dataset(tmp_path / "set")
    SynthesisStage(rule_based_config(jsonl.parent, tmp_path / "run")).run()
    out = tmp_path / "run" / "synthesis"
    loaded = datasets.load_dataset("parquet", data_files=str(out / "instructions" / "*.parquet"), split="train")
    assert len(loaded) == 2 and set(loaded.column_names) >= {"id", "images", "messages", "kind"}
    assert loaded.features["images"] == datasets.List(datasets.Image())  # decoded by datasets itself
    assert all(image.size == (64, 64) for row in loaded for image in row["images"])
    # Each image is stored once: the working rows lose their bytes once the sets are published.
    assert all("image" not in pq.read_schema(path).names for path in (out / "_rows").glob("*.parquet"))
    tasks = datasets.load_dataset("parquet", data_files=str(out / "tasks" / "*.parquet"), split="train")
    assert set(tasks["source_id"]) <= {"good-1", "good-2"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tasks_synthesized"] == len(tasks)
    assert manifest["tasks_kept"] == sum(tasks["kept"])


def test_rerun_of_a_complete_run_is_skipped(ray_cluster, tmp_path):
    jsonl = write_corrupt_jsonl_dataset(tmp_path / "set")
    config = rule_based_config(jsonl.parent, tmp_path / "run")
    first = SynthesisStage(config).run()
    second = SynthesisStage(config).run()
    assert second == json.loads((tmp_path / "run" / "synthesis" / "manifest.json").read_text())
    assert second["timings_s"] == first["timings_s"]


def test_a_changed_config_does_not_resume_anothers_rows(ray_cluster, tmp_path):
    jsonl = write_corrupt_jsonl_dataset(tmp_path / "set")
    SynthesisStage(rule_based_config(jsonl.parent, tmp_path / "run")).run()
    (tmp_path / "run" / "synthesis" / "manifest.json").unlink()  # as if the run had died before finishing
    changed = rule_based_config(jsonl.parent, tmp_path / "run").model_copy(update={"seed": 7})
    with pytest.raises(ConfigError, match="output_dir: .* another config"):
        SynthesisStage(changed).run()


def test_export_to_llama_factory_and_hf_disk(ray_cluster, tmp_path, capsys):
    jsonl = write_corrupt_jsonl_dataset(tmp_path / "set")
    SynthesisStage(rule_based_config(jsonl.parent, tmp_path / "run")).run()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "lf")]) == 0
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    entry = info["adapt_instructions"]
    assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "messages", "images": "images"}
    records = json.loads((tmp_path / "lf" / entry["file_name"]).read_text())
    assert sorted(record["id"] for record in records) == ["good-1", "good-2"]
    for record in records:
        assert all((tmp_path / "lf" / path).is_file() for path in record["images"])
        assert record["messages"][0]["content"].count("<image>") == len(record["images"])
    assert main(["export", str(tmp_path / "run"), "--to", "hf-disk", "--out", str(tmp_path / "hf")]) == 0
    assert len(datasets.load_from_disk(str(tmp_path / "hf"))) == 2


@pytest.mark.parametrize("data_format", ["parquet", "jsonl", "webdataset", "hf_disk"])
def test_every_input_format_through_the_pipeline(data_format, ray_cluster, tmp_path):
    path = write_pairs_as(data_format, tmp_path / "data", rows=6)
    manifest = SynthesisStage(rule_based_config(path, tmp_path / "run", data_format)).run()
    assert manifest["rows_in"] == manifest["rows_out"] == 6
    ids = sorted(row["id"] for row in read_set(tmp_path / "run", "instructions"))
    assert ids == [f"pair-{i:05d}" for i in range(6)]
    # nothing quarantined: the set is one file without row groups, the form datasets can stream
    (quarantine,) = (tmp_path / "run" / "synthesis" / "quarantine").iterdir()
    assert pq.ParquetFile(quarantine).metadata.num_row_groups == 0


def test_a_tuned_synthesizer_replaces_the_configured_model(workdir):
    tree = base_tree()
    tree["synthesizer_tuning"] = dict(tree["training"], task="synthesizer", dataset="./ds.json")
    config = load_config(write_config(workdir, tree)).with_absolute_paths()
    with pytest.raises(ConfigError, match="no tuned synthesizer in .*synthesizer_tuning/model"):
        with_tuned_synthesizer(config)
    tuned = workdir / "runs/x/synthesizer_tuning/model"
    tuned.mkdir(parents=True)
    (tuned / "config.json").write_text("{}")
    assert with_tuned_synthesizer(config).synthesis.engine.model == str(tuned)
    # How the synthesizer was tuned decides the tasks: it is part of the synthesis fingerprint.
    untuned = load_config(write_config(workdir, base_tree()))
    assert synthesis_fingerprint(config) != synthesis_fingerprint(untuned)


def test_the_releases_record_shape_through_the_pipeline(ray_cluster, tmp_path):
    """A JSON array of records in the release's shape: each record's instruction asks for its caption, and every
    kept task is composed with its kind recorded and counted."""
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    records = []
    for index in range(8):
        (folder / "images" / f"{index}.png").write_bytes(png_bytes((30 * index, 90, 200), size=64))
        records.append({"images": [f"images/{index}.png"], "messages": [
            {"role": "user", "content": f"<image>Write a recipe for dish {index}."},
            {"role": "assistant", "content": f"A bowl of red soup number {index} with green herbs.\n"}]})
    (folder / "image_caption_pairs.json").write_text(json.dumps(records, indent=2))
    manifest = SynthesisStage(rule_based_config(folder, tmp_path / "run")).run()

    assert manifest["rows_in"] == manifest["rows_out"] == 8
    examples = read_set(tmp_path / "run", "instructions")
    for example in examples:
        index = int(example["id"].rsplit(":", 1)[1])
        assert example["messages"][0]["content"] == f"<image>\nWrite a recipe for dish {index}."
        assert example["messages"][1]["content"] == f"A bowl of red soup number {index} with green herbs.\n"
    tasks = read_set(tmp_path / "run", "tasks")
    kept = [task for task in tasks if task["kept"]]
    assert kept and all(task["task_kind"] and task["compose_rule"] for task in kept)
    assert sum(manifest["task_kinds"].values()) == len(kept) == manifest["tasks_kept"]


def test_published_files_group_the_rows_files_by_size(tmp_path):
    import fsspec

    for index, size in enumerate([40, 70, 10, 100, 5]):
        (tmp_path / f"part-{index}.parquet").write_bytes(b"x" * size)
    (tmp_path / "notes.txt").write_text("not a rows file")
    groups = file_groups(fsspec.filesystem("file"), str(tmp_path), target_bytes=100)
    assert [[path.rsplit("/", 1)[-1] for path in group] for group in groups] == [
        ["part-0.parquet", "part-1.parquet"], ["part-2.parquet", "part-3.parquet"], ["part-4.parquet"]]

