"""`adapt score`: score a predictions file made by any system on one task, with the engine's own metrics.

Input, either:
- JSONL, one object a line: `prediction`, `label` (a string, or a list for FoodSeg103 / Nutrition5K), and where the
  task needs them `answer_type` (OPEN/CLOSED) and `options` (an object {"A": ..., "B": ...}). Labels are read the way
  the task reads benchmark records (a Food101 class name becomes its option number). The example index that seeds
  the multiple-choice fallback guess is the line's position (0-based, blank lines skipped), or the line's
  `example_index` when it has one.
- the runner's Parquet predictions (a file, or a folder such as evaluation/predictions/base/slake), which carry their
  own example indexes: rescoring them gives the numbers of report.json.

The scores are returned and, with `out_path`, written as JSON: the metric keys of the task (open_recall and
closed_accuracy, accuracy, rouge_l, f1 or recall), `n`, and `parse_fallbacks` for multiple-choice tasks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from engine.evaluation.report import read_prediction_rows, score_prediction_rows
from engine.evaluation.tasks import RecordError, TaskSpec, get_task

JSONL_SUFFIXES = (".jsonl", ".json")


def _scoring_row(spec: TaskSpec, record: dict[str, Any]) -> dict[str, Any]:
    try:
        label = spec.label(record["label"]) if record.get("label") is not None else None
    except RecordError:  # the scorer then refuses the row: it is counted as unscorable
        label = None
    options = record.get("options")
    return {
        "prediction": record.get("prediction"),
        "label": label,
        "answer_type": record.get("answer_type"),
        "options": json.loads(options) if isinstance(options, str) else options,
        "error": record.get("error"),
    }


def _jsonl_rows(spec: TaskSpec, path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    position = 0
    with fsspec.open(path, "rt", encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {line_number}: not JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {line_number}: not a JSON object")
            yield record.get("example_index", position), _scoring_row(spec, record)
            position += 1


def score_file(task: str, predictions_path: str, out_path: str | None = None) -> dict[str, Any]:
    """The task's scores over a predictions file (JSONL or the runner's Parquet); also written to `out_path`."""
    spec = get_task(task)
    if predictions_path.endswith(JSONL_SUFFIXES):
        scores = spec.summarize(_jsonl_rows(spec, predictions_path))
    else:
        scores = score_prediction_rows(spec, read_prediction_rows(predictions_path))
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(scores, indent=2) + "\n")
    return scores
