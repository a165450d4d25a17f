"""Task scorers: which metric each benchmark uses and how its per-example scores add up.

A row is a mapping with `prediction` (model output, may be None), `label` (string, or a list for the multi-label
tasks), and where the task needs them `answer_type` (OPEN/CLOSED) and `options` (choice -> option text). Scores are on
the x100 scale and task scores are means over examples, as in the paper (DESIGN.md section 4, Evaluation). Like the
metrics, the scorers reproduce the paper's released evaluation code on every input; its oddities are marked
"Official quirk:" here and in engine.evaluation.metrics.

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

FOODSEG103_SCORED_IDS = range(1, 103)  # 0 (background) and 103 (other ingredients) are neither parsed nor scored
NUTRITION5K_SCORED_IDS = range(0, 555)
PMC_VQA_CHOICES = ("A", "B", "C", "D")


@dataclass(frozen=True)
class TaskScorer:
    """How one task scores a row (given its index in the file) and summarizes the per-example scores."""

    score_example: Callable[[Row, int], ExampleScores]
    summarize: Callable[[list[ExampleScores]], dict[str, Any]]


# ---------------------------------------------------------------------------------------------------------------------
# Row fields


def _label(row: Row) -> Any:
    # Predictions may be missing, labels may not: a row without one is a broken benchmark, not a wrong answer. An EMPTY
    # label is a label: the official code scores it like any other (Recipe1M and OPEN 0, PMC-VQA a miss, CLOSED a hit
    # for any yes/no answer) and counts it in the mean.
    label = row.get("label")
    if label is None:
        raise ValueError(f"row has no label: {dict(row)!r}")
    return label


def _answer_type(row: Row) -> str:
    # Compared as written, as the official loop does: a row typed "open" is in neither of its means (here: unscorable).
    answer_type = row.get("answer_type")
    if answer_type not in ("OPEN", "CLOSED"):
        raise ValueError(f"answer_type must be OPEN or CLOSED, got {answer_type!r}")
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
    correct = choice == str(_label(row))
    return {"accuracy": 100.0 if correct else 0.0, "choice": choice, "parse_fallback": fell_back}


def _row_options(row: Row) -> Mapping[str, str]:
    options = row.get("options")
    if not options:
        raise ValueError(f"multiple-choice row has no options: {dict(row)!r}")
    return options


def _score_multiple_choice(row: Row, index: int) -> ExampleScores:
    return _choice_scores(row, index, _row_options(row))


def _score_pmc_vqa(row: Row, index: int) -> ExampleScores:
    # The official parser always offers A-D, whatever the record holds: a missing or empty option is an empty text
    # (which wins the option-text stage, see parse_choice) and stays among the choices the fallback guess draws from.
    options = _row_options(row)
    return _choice_scores(row, index, {choice: options.get(choice, "") for choice in PMC_VQA_CHOICES})


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


@cache
def _foodseg103_names() -> Mapping[int, str]:
    names = vocabularies.foodseg103_classes()
    return MappingProxyType({class_id: names[class_id] for class_id in FOODSEG103_SCORED_IDS})


@cache
def _nutrition5k_names() -> Mapping[int, str]:
    return MappingProxyType(dict(enumerate(vocabularies.nutrition5k_ingredients())))


@cache
def _id_by_name(vocabulary: tuple[str, ...]) -> Mapping[str, int]:
    # Official quirk: label names are looked up in the id -> name map turned round, where a repeated name keeps its
    # LAST id, while the parser records a repeated name's FIRST id: a Nutrition5K label "deprecated" is id 469 and
    # the answer "deprecated" is id 230, a miss.
    return MappingProxyType({name.lower(): class_id for class_id, name in enumerate(vocabulary)})


def _ids_of_label_item(item: Any, vocabulary: Sequence[str]) -> int:
    if isinstance(item, numbers.Integral):
        return int(item)
    text = str(item).strip()
    if text.isdigit():
        return int(text)
    class_id = _id_by_name(tuple(vocabulary)).get(text.lower())
    if class_id is None:
        raise ValueError(f"label {item!r} is neither a class id nor a class name of this task")
    return class_id


def _label_ids(label: Any, vocabulary: Sequence[str]) -> set[int]:
    # An empty text label is an empty list: the official code iterates the label, and "" has no items.
    bare = isinstance(label, numbers.Integral) or (isinstance(label, str) and label)
    items: Iterable[Any] = [label] if bare else label
    return {_ids_of_label_item(item, vocabulary) for item in items}


def _score_foodseg103(row: Row, index: int) -> ExampleScores:
    predicted = parse_labels(row.get("prediction"), _foodseg103_names())
    expected = _label_ids(_label(row), vocabularies.foodseg103_classes())
    return {"f1": _percent(per_image_f1(predicted, expected, FOODSEG103_SCORED_IDS))}


def _score_nutrition5k(row: Row, index: int) -> ExampleScores:
    predicted = parse_labels(row.get("prediction"), _nutrition5k_names())
    expected = _label_ids(_label(row), vocabularies.nutrition5k_ingredients())
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
    "pmc_vqa": TaskScorer(_score_pmc_vqa, _summarize_multiple_choice),
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
