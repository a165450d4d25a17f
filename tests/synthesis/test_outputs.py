"""Projections of working rows onto the published sets, duplicate handling, the accounting, and the file a set that
got no row is published as (checked with `datasets`, which streams it)."""

from __future__ import annotations

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from engine.io.run_dir import SYNTHESIS, RunDir
from engine.records import EXAMPLE_SCHEMA, TASK_SCHEMA
from engine.synthesis import outputs
from engine.synthesis.compose import compose
from engine.synthesis.examples import conversation
from engine.synthesis.parsing import SynthesizedTask
from engine.synthesis.pipeline import PUBLISHED_SETS, write_empty_sets
from engine.synthesis.rows import WORK_SCHEMA

TASK = SynthesizedTask(question="What colour is it?", precise="Red", informative="The shape is filled with red.")
COMPOSED = compose(TASK, seed=1)


def work_row(key: str, row_id: str, *, problem: str | None = None, task: bool = False, kept: bool = False,
             dropped: bool = False) -> dict:
    """A finished working row; `dropped`: a row without a task that got no example (the release's rule)."""
    shard, _, row = key.partition(":")
    composition = COMPOSED if task and kept else None
    messages, kind = conversation("A red circle.", None, composition)
    published = not (problem or dropped)
    return {
        "row_key": key, "id": row_id, "shard": shard, "row": int(row), "image": b"png", "caption": "A red circle.",
        "instruction": "Describe it.", "problem_reason": problem, "problem_stage": "validate" if problem else None,
        "question": TASK.question if task else None, "precise": TASK.precise if task else None,
        "informative": TASK.informative if task else None, "task_reason": None if task else "no_task",
        "consistency": ("yes" if kept else "no") if task else None, "kept": kept if task else None,
        "drop_reason": None if kept or not task else "inconsistent", "output_tokens": 10,
        "messages": messages if published else None, "kind": kind if published else None,
        "compose_rule": composition and composition.rule, "task_kind": composition and composition.kind,
    }


def batch() -> pa.Table:
    rows = [
        work_row("a.jsonl:0", "x", task=True, kept=True),
        work_row("a.jsonl:1", "y", task=True, kept=False),
        work_row("a.jsonl:2", "z", problem="corrupt_image"),
        work_row("b.jsonl:0", "x"),  # same id as a.jsonl:0, later shard: the duplicate
        work_row("a.jsonl:3", "w"),
        work_row("a.jsonl:4", "v", dropped=True),
    ]
    return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)


def test_first_copy_of_an_id_wins():
    assert outputs.duplicate_row_keys(batch().select(outputs.ACCOUNTING_COLUMNS)) == {"b.jsonl:0"}


def test_projections():
    marked = outputs.mark_duplicates(batch(), {"b.jsonl:0"})
    examples = outputs.to_examples(marked)
    assert examples.schema.equals(EXAMPLE_SCHEMA, check_metadata=True)  # the metadata types the images for datasets
    assert examples["id"].to_pylist() == ["x", "y", "w"]
    assert examples["kind"].to_pylist() == ["caption+synthetic", "caption", "caption"]
    assert examples["task_kind"].to_pylist() == [COMPOSED.kind, None, None]
    tasks = outputs.to_tasks(marked)
    assert tasks.schema == TASK_SCHEMA
    assert tasks.to_pydict()["kept"] == [True, False] and tasks["reason"].to_pylist() == [None, "inconsistent"]
    assert tasks["compose_rule"].to_pylist() == ["cot_template", None]
    quarantine = outputs.to_quarantine(marked).to_pylist()
    assert [(row["id"], row["reason"], row["stage"]) for row in quarantine] == [
        ("z", "corrupt_image", "validate"),
        ("x", "duplicate_id", "deduplicate"),
    ]
    assert quarantine[1]["row_key"] == "b.jsonl:0" and quarantine[1]["caption"] == "A red circle."
    assert quarantine[1]["instruction"] == "Describe it."


def test_accounting_balances_with_dropped_pairs():
    counts = outputs.accounting(batch().select(outputs.ACCOUNTING_COLUMNS), {"b.jsonl:0"})
    assert counts["rows_in"] == 6 and counts["rows_out"] == 3
    assert counts["rows_quarantined"] == {"corrupt_image": 1, "duplicate_id": 1}
    assert counts["rows_dropped"] == {"no_task": 1}
    assert counts["rows_in"] == counts["rows_out"] + 1 + 2
    assert counts["tasks_synthesized"] == 2 and counts["tasks_kept"] == 1
    assert counts["tasks_dropped"] == {"inconsistent": 1}
    assert counts["tasks_missing"] == {"no_task": 2}  # the kept caption-only row and the dropped one
    assert counts["consistency"] == {"yes": 1, "no": 1}
    assert counts["examples_by_kind"] == {"caption+synthetic": 1, "caption": 2}
    assert counts["compose_rules"] == {"cot_template": 1} and counts["task_kinds"] == {COMPOSED.kind: 1}
    assert counts["output_tokens"] == 40


def test_conversation_puts_the_caption_first_and_the_composed_exchange_second():
    messages, kind = conversation("A red circle.", "<image>Name the shape.", COMPOSED)
    assert kind == "caption+synthetic"
    assert messages == [
        {"role": "user", "content": "<image>\nName the shape."},
        {"role": "assistant", "content": "A red circle."},
        {"role": "user", "content": COMPOSED.user},
        {"role": "assistant", "content": COMPOSED.response},
    ]


def test_a_set_that_got_no_row_is_published_without_row_groups_and_streams_in_datasets(tmp_path):
    # As finalize finds a clean run after its publish tasks: rows in instructions/ and tasks/, none in quarantine/.
    stage = RunDir(str(tmp_path / "run")).stage(SYNTHESIS)
    rows = pa.Table.from_pylist([work_row("a.jsonl:0", "x", task=True, kept=True)], schema=WORK_SCHEMA)
    for name, project in PUBLISHED_SETS.items():
        stage.fs.makedirs(stage.path(name), exist_ok=True)
        if len(project(rows)):
            pq.write_table(project(rows), stage.path(name, "part-0.parquet"))
    write_empty_sets(stage)
    folders = {name: tmp_path / "run" / SYNTHESIS / name for name in PUBLISHED_SETS}
    assert sorted(path.name for path in folders["quarantine"].iterdir()) == ["empty.parquet"]
    assert not (folders["tasks"] / "empty.parquet").exists()  # a set with rows gets no extra file
    empty = pq.ParquetFile(folders["quarantine"] / "empty.parquet")
    # pq.write_table would write one empty row group, on which datasets fails: "BatchSize must be greater than 0"
    assert empty.metadata.num_row_groups == 0
    assert empty.schema_arrow == outputs.to_quarantine(WORK_SCHEMA.empty_table()).schema
    streamed = datasets.load_dataset("parquet", data_files=str(folders["quarantine"] / "*.parquet"), split="train",
                                     streaming=True, cache_dir=str(tmp_path / "hf-cache"))
    assert list(streamed) == []
