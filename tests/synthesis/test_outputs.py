"""Projections of working rows onto the published sets, duplicate handling and the accounting."""

from __future__ import annotations

import pyarrow as pa

from engine.records import EXAMPLE_SCHEMA, TASK_SCHEMA
from engine.synthesis import outputs
from engine.synthesis.examples import conversation
from engine.synthesis.parsing import SynthesizedTask
from engine.synthesis.rows import WORK_SCHEMA

TASK = SynthesizedTask(question="What colour is it?", precise="Red", informative="The shape is filled with red.")


def work_row(key: str, row_id: str, *, problem: str | None = None, task: bool = False, kept: bool = False) -> dict:
    shard, _, row = key.partition(":")
    messages, kind = conversation("A red circle.", TASK if task and kept else None, seed=1)
    return {
        "row_key": key, "id": row_id, "shard": shard, "row": int(row), "image": b"png", "caption": "A red circle.",
        "problem_reason": problem, "problem_stage": "validate" if problem else None,
        "question": TASK.question if task else None, "precise": TASK.precise if task else None,
        "informative": TASK.informative if task else None, "task_reason": None if task else "no_task",
        "consistency": ("yes" if kept else "no") if task else None, "kept": kept if task else None,
        "drop_reason": None if kept or not task else "inconsistent", "output_tokens": 10,
        "messages": None if problem else messages, "kind": None if problem else kind,
    }


def batch() -> pa.Table:
    rows = [
        work_row("a.jsonl:0", "x", task=True, kept=True),
        work_row("a.jsonl:1", "y", task=True, kept=False),
        work_row("a.jsonl:2", "z", problem="corrupt_image"),
        work_row("b.jsonl:0", "x"),  # same id as a.jsonl:0, later shard: the duplicate
        work_row("a.jsonl:3", "w"),
    ]
    return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)


def test_first_copy_of_an_id_wins():
    assert outputs.duplicate_row_keys(batch().select(outputs.ACCOUNTING_COLUMNS)) == {"b.jsonl:0"}


def test_projections():
    marked = outputs.mark_duplicates(batch(), {"b.jsonl:0"})
    examples = outputs.to_examples(marked)
    assert examples.schema == EXAMPLE_SCHEMA
    assert examples["id"].to_pylist() == ["x", "y", "w"]
    assert examples["kind"].to_pylist() == ["caption+synthetic", "caption", "caption"]
    tasks = outputs.to_tasks(marked)
    assert tasks.schema == TASK_SCHEMA
    assert tasks.to_pydict()["kept"] == [True, False] and tasks["reason"].to_pylist() == [None, "inconsistent"]
    quarantine = outputs.to_quarantine(marked).to_pylist()
    assert [(row["id"], row["reason"], row["stage"]) for row in quarantine] == [
        ("z", "corrupt_image", "validate"),
        ("x", "duplicate_id", "deduplicate"),
    ]
    assert quarantine[1]["row_key"] == "b.jsonl:0" and quarantine[1]["caption"] == "A red circle."


def test_accounting_balances():
    counts = outputs.accounting(batch().select(outputs.ACCOUNTING_COLUMNS), {"b.jsonl:0"})
    assert counts["rows_in"] == 5 and counts["rows_out"] == 3
    assert counts["rows_quarantined"] == {"corrupt_image": 1, "duplicate_id": 1}
    assert counts["rows_in"] == counts["rows_out"] + sum(counts["rows_dropped"].values()) + 2
    assert counts["tasks_synthesized"] == 2 and counts["tasks_kept"] == 1
    assert counts["tasks_dropped"] == {"inconsistent": 1}
    assert counts["tasks_missing"] == {"no_task": 1}
    assert counts["consistency"] == {"yes": 1, "no": 1}
    assert counts["examples_by_kind"] == {"caption+synthetic": 1, "caption": 2}
    assert counts["output_tokens"] == 30


def test_conversation_puts_the_caption_first_and_the_chain_of_thought_second():
    messages, kind = conversation("A red circle.", TASK, seed=3)
    assert kind == "caption+synthetic"
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "<image>\nDescribe the image." and messages[1]["content"] == "A red circle."
    assert messages[2]["content"] == TASK.question
    assert TASK.informative in messages[3]["content"] and "Red" in messages[3]["content"]
