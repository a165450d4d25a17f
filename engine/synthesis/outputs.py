"""Projections of finished working rows (rows.py) onto the published sets, and the run's accounting.

instructions/ (training examples), tasks/ (every synthesized task with its verdict) and quarantine/ (every refused
row with stage and reason) are each a pure function of a batch of working rows, so Ray Data can write them in
parallel and tests can check them without Ray.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.records import COMPOSE_FIELDS, EXAMPLE_SCHEMA, LINEAGE_FIELDS, TASK_SCHEMA

DUPLICATE_ID = "duplicate_id"
ORIGINAL_COLUMNS = ("row_key", "shard", "row", "image", "image_path", "caption", "instruction", "meta")
LINEAGE_NAMES = [field.name for field in LINEAGE_FIELDS]
COMPOSE_NAMES = [field.name for field in COMPOSE_FIELDS]
# Columns the accounting reads: small, so a driver can read them for millions of rows.
ACCOUNTING_COLUMNS = ["row_key", "id", "shard", "row", "problem_reason", "task_reason", "question", "consistency",
                      "kept", "drop_reason", "output_tokens", "kind", *COMPOSE_NAMES]


def duplicate_row_keys(accounting: pa.Table) -> set[str]:
    """Usable rows whose id an earlier usable row (by shard, then position) already has. The first one wins."""
    usable = accounting.filter(pc.is_null(accounting["problem_reason"]))
    ordered = usable.sort_by([("id", "ascending"), ("shard", "ascending"), ("row", "ascending")])
    ids, keys = ordered["id"].to_pylist(), ordered["row_key"].to_pylist()
    return {key for previous, current, key in zip([None, *ids], ids, keys) if previous == current}


def mark_duplicates(batch: pa.Table, duplicates: set[str]) -> pa.Table:
    """Quarantine the losing copies of duplicated ids (they were processed, but only the first copy is published)."""
    if not duplicates:
        return batch
    is_duplicate = pc.is_in(batch["row_key"], value_set=pa.array(sorted(duplicates), pa.string()))
    reason = pc.if_else(is_duplicate, pa.scalar(DUPLICATE_ID), batch["problem_reason"])
    detail = pc.if_else(is_duplicate, pa.scalar("an earlier row has this id"), batch["problem_detail"])
    stage = pc.if_else(is_duplicate, pa.scalar("deduplicate"), batch["problem_stage"])
    for name, column in (("problem_reason", reason), ("problem_detail", detail), ("problem_stage", stage)):
        batch = batch.set_column(batch.schema.get_field_index(name), name, column)
    return batch


def _rows(batch: pa.Table, mask) -> list[dict[str, Any]]:
    return batch.filter(mask).to_pylist()


def to_examples(batch: pa.Table) -> pa.Table:
    """Usable rows that became an example (a dropped row has no `kind`)."""
    rows = _rows(batch, pc.and_(pc.is_null(batch["problem_reason"]), pc.is_valid(batch["kind"])))
    examples = [
        {"id": row["id"], "source_id": row["id"], "images": [{"bytes": row["image"], "path": None}],
         "messages": row["messages"], "kind": row["kind"],
         **{name: row[name] for name in (*COMPOSE_NAMES, *LINEAGE_NAMES)}}
        for row in rows
    ]
    return pa.Table.from_pylist(examples, schema=EXAMPLE_SCHEMA)


def to_tasks(batch: pa.Table) -> pa.Table:
    rows = _rows(batch, pc.and_(pc.is_null(batch["problem_reason"]), pc.is_valid(batch["question"])))
    tasks = [
        {"id": f"{row['id']}#0", "source_id": row["id"], "question": row["question"], "precise": row["precise"],
         "informative": row["informative"], "consistency": row["consistency"], "kept": bool(row["kept"]),
         "reason": row["drop_reason"], **{name: row[name] for name in (*COMPOSE_NAMES, *LINEAGE_NAMES)}}
        for row in rows
    ]
    return pa.Table.from_pylist(tasks, schema=TASK_SCHEMA)


def to_quarantine(batch: pa.Table) -> pa.Table:
    refused = batch.filter(pc.is_valid(batch["problem_reason"]))
    return pa.table(
        {
            "id": refused["id"],
            "stage": refused["problem_stage"],
            "reason": refused["problem_reason"],
            "detail": refused["problem_detail"],
            **{name: refused[name] for name in ORIGINAL_COLUMNS},
        }
    )


def _counts(values: pa.ChunkedArray) -> dict[str, int]:
    return {str(item["values"]): item["counts"] for item in pc.value_counts(values).to_pylist()}


def accounting(columns: pa.Table, duplicates: set[str]) -> dict[str, Any]:
    """The manifest's counts over ACCOUNTING_COLUMNS (columnar, so millions of rows cost little memory).

    Every row is quarantined with its reason, dropped with its reason (a usable row without a task and without an
    example: its `task_reason`), or published as one example, so rows_in == rows_out + sum(rows_dropped) +
    sum(rows_quarantined) holds by construction. `task_kinds` and `compose_rules` count what compose made of the kept
    tasks."""
    is_duplicate = pc.and_(
        pc.is_null(columns["problem_reason"]),
        pc.is_in(columns["row_key"], value_set=pa.array(sorted(duplicates), pa.string())),
    )
    reason = pc.if_else(is_duplicate, pa.scalar(DUPLICATE_ID), columns["problem_reason"])
    usable = columns.filter(pc.is_null(reason))
    published = usable.filter(pc.is_valid(usable["kind"]))
    with_task = usable.filter(pc.is_valid(usable["question"]))
    without_task = usable.filter(pc.is_null(usable["question"]))
    return {
        "rows_in": len(columns),
        "rows_out": len(published),
        "rows_dropped": _counts(usable.filter(pc.is_null(usable["kind"]))["task_reason"]),
        "rows_quarantined": _counts(reason.filter(pc.is_valid(reason))),
        "examples_by_kind": _counts(published["kind"]),
        "tasks_synthesized": len(with_task),
        "tasks_kept": pc.sum(pc.fill_null(with_task["kept"], False).cast(pa.int64())).as_py() or 0,
        "tasks_missing": _counts(without_task["task_reason"]),
        "tasks_dropped": _counts(with_task.filter(pc.invert(pc.fill_null(with_task["kept"], False)))["drop_reason"]),
        "consistency": _counts(with_task["consistency"]),
        "compose_rules": _counts(pc.drop_null(published["compose_rule"])),
        "task_kinds": _counts(pc.drop_null(published["task_kind"])),
        "output_tokens": pc.sum(usable["output_tokens"]).as_py() or 0,
    }
