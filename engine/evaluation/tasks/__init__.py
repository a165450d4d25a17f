"""The evaluation tasks: one `TaskSpec` per benchmark, declared by one module per domain, gathered in `TASKS`.

A spec says where a benchmark's records live (its hub id and subset, read with `datasets.load_dataset` on a cluster;
a local copy is named by the config instead), what each record must carry, how the prompt is made, how many tokens
an answer may take, and which scorer of `engine.evaluation.scoring` gives its metrics. It is plain data plus small
functions, so the runner, `adapt score`, the report and the lmms-eval export all read the same definition.

Prompt (DESIGN.md section 4, Evaluation): the record's `input` as one user turn after the image, zero-shot; the model
family's chat format is applied by the runner (`engine.models.families.render`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from engine.evaluation.scoring import task_scorer
from engine.models.families import IMAGE_PLACEHOLDER


class RecordError(ValueError):
    """A benchmark record that cannot be evaluated. `reason` is a short stable key (counted in reports)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def text_label(value: Any) -> str:
    """A single-answer label (a string or a number) as stored: its text, unchanged.

    An empty label is kept: the official evaluation scores it (see engine.evaluation.scoring), and its comparisons see
    the label as written, edge spaces included.
    """
    if value is None:
        raise RecordError("missing_field", "no 'label'")
    if isinstance(value, (list, tuple, dict)):
        raise RecordError("bad_label", f"expected one answer, got {type(value).__name__}")
    return str(value)


def list_label(value: Any) -> list[Any]:
    """A multi-label label as stored: a list of class names or ids (JSON text of a list is accepted too)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            # A bare class name; "" names none (the official code iterates the label, and "" has no items).
            value = [value] if value else []
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, (str, int)) for item in value):
        raise RecordError("bad_label", f"expected a list of class names or ids, got {value!r}")
    return list(value)


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark: its records, prompt budget and scorer.

    `metrics` are the headline keys of the scorer's summary, in report order. `label` turns a record's raw label into
    the form the scorer takes (text, or a list for multi-label tasks) and raises RecordError when it cannot.
    `answer_type` and `options` say whether records must carry an OPEN/CLOSED type or multiple-choice options.
    """

    name: str
    title: str
    domain: str
    scorer: str
    metrics: tuple[str, ...]
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split: str = "test"
    max_tokens: int = 1024
    answer_type: bool = False
    options: bool = False
    label: Callable[[Any], Any] = text_label
    list_label: bool = False

    def answer_budget(self, cap: int | None) -> int:
        """New tokens an answer may take: the task's (the paper's 1024, or 256), capped by an engine's `max_tokens`
        when it sets one (small models, smoke runs)."""
        return self.max_tokens if cap is None else min(self.max_tokens, cap)

    def user_turn(self, text: str) -> str:
        """The user message of a record: the image, then its `input` text."""
        return f"{IMAGE_PLACEHOLDER}\n{text}"

    def encode_label(self, value: Any) -> str:
        """A record's label in the text column of the benchmark and prediction files (lists as JSON text)."""
        label = self.label(value)
        return json.dumps(label, ensure_ascii=False) if self.list_label else label

    def scoring_row(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        """A stored prediction row (text columns) as the scorer reads it."""
        label, options = stored.get("label"), stored.get("options")
        return {
            "prediction": stored.get("prediction"),
            "label": json.loads(label) if self.list_label and isinstance(label, str) else label,
            "answer_type": stored.get("answer_type"),
            "options": json.loads(options) if isinstance(options, str) else options,
            "error": stored.get("error"),
        }

    def score_example(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        """Per-example scores (x100); `index` is the example's 0-based position in its benchmark."""
        return task_scorer(self.scorer).score_example(row, index)

    def summarize(self, rows: Iterable[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
        """Task scores over (example index, scoring row) pairs.

        A row whose prediction is missing (the model failed on it) is scored as an empty answer; a row with an empty
        label is scored and counted, as in the paper's evaluation. A row the scorer refuses (no label, no options,
        an answer type other than OPEN or CLOSED) is left out and counted as `unscorable`; rows carrying an `error`
        are counted as `errors` (and as `error_pct` of all rows). These keys appear only when non-zero. `n` is the
        number of rows scored.
        """
        scorer = task_scorer(self.scorer)
        scores, unscorable, errors = [], 0, 0
        for index, row in rows:
            errors += row.get("error") is not None
            try:
                scores.append(scorer.score_example(row, index))
            except ValueError:
                unscorable += 1
        summary = {"n": len(scores), **scorer.summarize(scores)}
        if errors:
            summary["errors"] = errors
            summary["error_pct"] = round(100 * errors / (len(scores) + unscorable), 2)
        if unscorable:
            summary["unscorable"] = unscorable
        return summary


def _registry() -> Mapping[str, TaskSpec]:
    # Imported here: the domain modules import TaskSpec from this package.
    from engine.evaluation.tasks import biomedicine, demo, food, remote_sensing

    specs = [*biomedicine.TASKS, *food.TASKS, *remote_sensing.TASKS, *demo.TASKS]
    return MappingProxyType({spec.name: spec for spec in specs})


TASKS: Mapping[str, TaskSpec] = _registry()


def get_task(name: str) -> TaskSpec:
    """The spec of a task; ValueError naming the valid tasks when it is unknown."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None
