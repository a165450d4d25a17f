"""Task scorers: which metric each benchmark uses and how its per-example scores add up.

A row is a mapping with `prediction` (model output, may be None), `label` (string, or a list for the multi-label
tasks), and where the task needs them `answer_type` (OPEN/CLOSED) and `options` (choice -> option text). Scores are on
the x100 scale and task scores are means over examples, as in the paper (DESIGN.md section 4, Evaluation).

`score_example` gives the per-example scores a predictions file carries; `score_predictions` gives a task's summary.
The row's position in its predictions file is the example index that seeds the multiple-choice fallback.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any

from engine.evaluation import vocabularies
from engine.evaluation.metrics import (
    closed_hit,
    open_recall,
    parse_choice,
    parse_labels,
    per_image_f1,
    per_image_recall,
    rouge_l,
)

Row = Mapping[str, Any]
ExampleScores = dict[str, Any]

FOODSEG103_SCORED_IDS = range(1, 103)  # 0 (background) and 103 (other ingredients) are not scored
NUTRITION5K_SCORED_IDS = range(0, 555)


@dataclass(frozen=True)
class TaskScorer:
    """How one task scores a row (given its index in the file) and summarizes the per-example scores."""

    score_example: Callable[[Row, int], ExampleScores]
    summarize: Callable[[list[ExampleScores]], dict[str, Any]]


# ---------------------------------------------------------------------------------------------------------------------
# Row fields


def _label(row: Row) -> Any:
    # Predictions may be missing, labels may not: a row without one is a broken benchmark, not a wrong answer.
    label = row.get("label")
    if label is None:
        raise ValueError(f"row has no label: {dict(row)!r}")
    return label


def _answer_type(row: Row) -> str:
    answer_type = str(row.get("answer_type") or "").strip().upper()
    if answer_type not in ("OPEN", "CLOSED"):
        raise ValueError(f"answer_type must be OPEN or CLOSED, got {row.get('answer_type')!r}")
    return answer_type


def _percent(fraction: float) -> float:
    return 100.0 * fraction


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _mean_of(key: str) -> Callable[[list[ExampleScores]], dict[str, Any]]:
    def summarize(scores: list[ExampleScores]) -> dict[str, Any]:
        return {key: _mean([example[key] for example in scores])}

    return summarize


# ---------------------------------------------------------------------------------------------------------------------
# Medical VQA: open and closed questions are scored apart and averaged apart.


def _score_medical_vqa(row: Row, index: int) -> ExampleScores:
    if _answer_type(row) == "OPEN":
        return {"open_recall": _percent(open_recall(row.get("prediction"), str(_label(row))))}
    hit = closed_hit(row.get("prediction"), str(_label(row)))
    return {"closed_accuracy": 100.0 if hit else 0.0}


def _summarize_medical_vqa(scores: list[ExampleScores]) -> dict[str, Any]:
    open_scores = [example["open_recall"] for example in scores if "open_recall" in example]
    closed_scores = [example["closed_accuracy"] for example in scores if "closed_accuracy" in example]
    return {
        "open_recall": _mean(open_scores),
        "closed_accuracy": _mean(closed_scores),
        "n_open": len(open_scores),
        "n_closed": len(closed_scores),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Multiple choice


@cache
def _food101_options() -> Mapping[str, str]:
    return MappingProxyType({str(class_id): name for class_id, name in enumerate(vocabularies.food101_classes())})


def _choice_scores(row: Row, index: int, options: Mapping[str, str]) -> ExampleScores:
    choice, fell_back = parse_choice(row.get("prediction"), options, index)
    correct = choice == str(_label(row)).strip()
    return {"accuracy": 100.0 if correct else 0.0, "choice": choice, "parse_fallback": fell_back}


def _score_multiple_choice(row: Row, index: int) -> ExampleScores:
    options = row.get("options")
    if not options:
        raise ValueError(f"multiple-choice row has no options: {dict(row)!r}")
    return _choice_scores(row, index, options)


def _score_food101(row: Row, index: int) -> ExampleScores:
    return _choice_scores(row, index, row.get("options") or _food101_options())


def _summarize_multiple_choice(scores: list[ExampleScores]) -> dict[str, Any]:
    return {
        "accuracy": _mean([example["accuracy"] for example in scores]),
        "parse_fallbacks": sum(1 for example in scores if example["parse_fallback"]),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Captioning


def _score_caption(row: Row, index: int) -> ExampleScores:
    return {"rouge_l": _percent(rouge_l(row.get("prediction"), str(_label(row))))}


# ---------------------------------------------------------------------------------------------------------------------
# Multi-label: labels are lists of class ids or names (a bare id or name counts as a one-item list).


def _ids_of_label_item(item: Any, vocabulary: Sequence[str]) -> set[int]:
    if isinstance(item, numbers.Integral):
        return {int(item)}
    text = str(item).strip()
    if text.isdigit():
        return {int(text)}
    class_ids = {class_id for class_id, name in enumerate(vocabulary) if name.lower() == text.lower()}
    if not class_ids:
        raise ValueError(f"label {item!r} is neither a class id nor a class name of this task")
    return class_ids


def _label_ids(label: Any, vocabulary: Sequence[str]) -> set[int]:
    items: Iterable[Any] = [label] if isinstance(label, (str, numbers.Integral)) else label
    return set().union(*(_ids_of_label_item(item, vocabulary) for item in items))


def _score_foodseg103(row: Row, index: int) -> ExampleScores:
    vocabulary = vocabularies.foodseg103_classes()
    predicted = parse_labels(row.get("prediction"), vocabulary)
    expected = _label_ids(_label(row), vocabulary)
    return {"f1": _percent(per_image_f1(predicted, expected, FOODSEG103_SCORED_IDS))}


def _score_nutrition5k(row: Row, index: int) -> ExampleScores:
    vocabulary = vocabularies.nutrition5k_ingredients()
    predicted = parse_labels(row.get("prediction"), vocabulary)
    expected = _label_ids(_label(row), vocabulary)
    return {"recall": _percent(per_image_recall(predicted, expected, NUTRITION5K_SCORED_IDS))}


# ---------------------------------------------------------------------------------------------------------------------
# Registry

_MEDICAL_VQA = TaskScorer(_score_medical_vqa, _summarize_medical_vqa)
_MULTIPLE_CHOICE = TaskScorer(_score_multiple_choice, _summarize_multiple_choice)
_CAPTION = TaskScorer(_score_caption, _mean_of("rouge_l"))

TASKS: Mapping[str, TaskScorer] = MappingProxyType({
    "vqa_rad": _MEDICAL_VQA,
    "slake": _MEDICAL_VQA,
    "pathvqa": _MEDICAL_VQA,
    "pmc_vqa": _MULTIPLE_CHOICE,
    "food101": TaskScorer(_score_food101, _summarize_multiple_choice),
    "clrs": _MULTIPLE_CHOICE,
    "ucmerced": _MULTIPLE_CHOICE,
    "floodnet": _MULTIPLE_CHOICE,
    "recipe1m": _CAPTION,
    "nwpu_captions": _CAPTION,
    "foodseg103": TaskScorer(_score_foodseg103, _mean_of("f1")),
    "nutrition5k": TaskScorer(_score_nutrition5k, _mean_of("recall")),
})


def task_scorer(task: str) -> TaskScorer:
    """The scorer of a task; ValueError naming the valid tasks when it is unknown."""
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(sorted(TASKS))}") from None


def score_example(task: str, row: Row, index: int) -> ExampleScores:
    """Per-example scores (x100) of one row; `index` is the row's 0-based position in its predictions file."""
    return task_scorer(task).score_example(row, index)


def score_predictions(task: str, rows: Iterable[Row]) -> dict[str, Any]:
    """A task's scores (x100 means over examples, None when no example has that metric) and `n`, the row count.

    Multiple-choice tasks also report `parse_fallbacks`; medical VQA tasks report `n_open` and `n_closed`.
    """
    scorer = task_scorer(task)
    scores = [scorer.score_example(row, index) for index, row in enumerate(rows)]
    return {"n": len(scores), **scorer.summarize(scores)}
