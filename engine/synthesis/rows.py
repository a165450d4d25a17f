"""The working row of the synthesis pipeline: one per input record, carried through every step and written once.

A row is either quarantined (`problem_reason` set, with the step that refused it), dropped (usable but without a
task, as the release drops such pairs: no `messages`, `task_reason` says why), or becomes one training example
(`messages`, `kind`). Its candidate task (`question`/`precise`/`informative`), or `task_reason` saying why it has none,
the judge's verdict and what compose made of it (`compose_rule`, `task_kind`) travel with it, so one Parquet row records
everything that happened to one input. The final
instructions/, tasks/ and quarantine/ sets are projections of these rows (see pipeline.finalize).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any

import pyarrow as pa

from engine.io.sources import RAW_SCHEMA
from engine.records import COMPOSE_FIELDS, LINEAGE_FIELDS, MESSAGE_TYPE

WORK_SCHEMA = pa.schema(
    [
        *RAW_SCHEMA,
        pa.field("problem_stage", pa.string()),
        pa.field("question", pa.string()),
        pa.field("precise", pa.string()),
        pa.field("informative", pa.string()),
        pa.field("task_reason", pa.string()),  # why the row has no task (parse failure, failed request, ...)
        pa.field("task_detail", pa.string()),
        pa.field("output_tokens", pa.int64()),  # synthesizer tokens generated for this row
        pa.field("consistency", pa.string()),  # yes | no | open | null
        pa.field("kept", pa.bool_()),
        pa.field("drop_reason", pa.string()),
        pa.field("messages", pa.list_(MESSAGE_TYPE)),
        pa.field("kind", pa.string()),
        *COMPOSE_FIELDS,
        *(field for field in LINEAGE_FIELDS if field.name not in RAW_SCHEMA.names),  # `shard` is already there
    ]
)


def row_seed(run_seed: int, row_id: str) -> int:
    """A per-row seed that is the same in every process and every run (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(f"{run_seed}:{row_id}".encode()).digest()[:4], "big")


def is_usable(row: dict[str, Any]) -> bool:
    return row["problem_reason"] is None


def has_task(row: dict[str, Any]) -> bool:
    return is_usable(row) and row["question"] is not None


class RowStep(ABC):
    """A Ray Data map_batches callable over pyarrow batches: rows in, the same rows out with more columns filled.

    Subclasses implement `process(rows)`; the steps that hold a model are EngineSteps (engine.runtime) with the same
    output. The fixed output schema keeps every block's columns and types identical, whatever a batch happened to
    contain."""

    @abstractmethod
    def process(self, rows: list[dict[str, Any]]) -> None:
        """Update the rows in place."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        self.process(rows)
        return work_table(rows)


def work_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)
