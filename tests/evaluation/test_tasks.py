"""Unit tests of engine.evaluation.tasks: the registry, each task's declaration, labels, prompts and summaries."""

from __future__ import annotations

import pytest

from engine.evaluation import scoring
from engine.evaluation.tasks import TASKS, RecordError, get_task, list_label, text_label
from engine.evaluation.tasks.food import food101_label

PAPER_TASKS = {
    "vqa_rad": ("biomedicine", ("open_recall", "closed_accuracy")),
    "slake": ("biomedicine", ("open_recall", "closed_accuracy")),
    "pathvqa": ("biomedicine", ("open_recall", "closed_accuracy")),
    "pmc_vqa": ("biomedicine", ("accuracy",)),
    "recipe1m": ("food", ("rouge_l",)),
    "food101": ("food", ("accuracy",)),
    "foodseg103": ("food", ("f1",)),
    "nutrition5k": ("food", ("recall",)),
    "clrs": ("remote_sensing", ("accuracy",)),
    "ucmerced": ("remote_sensing", ("accuracy",)),
    "floodnet": ("remote_sensing", ("accuracy",)),
    "nwpu_captions": ("remote_sensing", ("rouge_l",)),
}

HUB_IDS = {
    "biomedicine": "AdaptLLM/biomed-VQA-benchmark",
    "food": "AdaptLLM/food-VQA-benchmark",
    "remote_sensing": "AdaptLLM/remote-sensing-VQA-benchmark",
}


def test_registry_holds_the_paper_tasks_and_the_demo():
    assert set(TASKS) == set(PAPER_TASKS) | {"demo_vqa"}
    for name, (domain, metrics) in PAPER_TASKS.items():
        spec = get_task(name)
        assert (spec.domain, spec.metrics, spec.scorer) == (domain, metrics, name)
        assert spec.hub_id == HUB_IDS[domain]
        assert spec.hub_split == "test"


def test_every_scorer_exists_and_reports_the_declared_metrics():
    for spec in TASKS.values():
        assert spec.scorer in scoring.TASKS
        row = {"prediction": "yes", "label": "yes", "answer_type": "CLOSED", "options": {"A": "yes", "B": "no"}}
        if spec.list_label:
            row["label"] = [1]
        if spec.name == "food101":
            row["label"] = "0"
        if spec.name in ("pmc_vqa", "clrs", "ucmerced", "floodnet"):
            row["label"] = "A"
        summary = spec.summarize([(0, row)])
        assert set(spec.metrics) <= set(summary), spec.name


def test_hub_subsets_of_the_released_benchmarks():
    subsets = {name: get_task(name).hub_config for name in
               ("vqa_rad", "slake", "pathvqa", "pmc_vqa", "recipe1m", "food101", "foodseg103", "nutrition5k")}
    assert subsets == {"vqa_rad": "VQA_RAD", "slake": "SLAKE", "pathvqa": "PathVQA", "pmc_vqa": "PMC-VQA",
                       "recipe1m": "Recipe1M", "food101": "Food101", "foodseg103": "FoodSeg103",
                       "nutrition5k": "Nutrition5K"}


def test_answer_budgets():
    short = {name for name, spec in TASKS.items() if spec.max_tokens == 256}
    assert short == {"food101", "foodseg103", "nutrition5k"}
    assert all(spec.max_tokens == 1024 for name, spec in TASKS.items() if name not in short)


def test_demo_task_scores_like_vqa_rad():
    spec = get_task("demo_vqa")
    assert (spec.scorer, spec.metrics, spec.hub_id, spec.answer_type) == (
        "vqa_rad", ("open_recall", "closed_accuracy"), None, True)


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown task 'mmmu'.*demo_vqa"):
        get_task("mmmu")


def test_user_turn_puts_the_image_first():
    assert get_task("slake").user_turn("Which organ is shown?") == "<image>\nWhich organ is shown?"


def test_food101_label_from_class_name_or_number():
    assert food101_label("apple pie") == "0"
    assert food101_label("Apple_Pie") == "0"
    assert food101_label(" 100 ") == "100"
    with pytest.raises(RecordError, match="unknown_label"):
        food101_label("pizza margherita")
    # The official code stops on a label that names no class; the engine refuses the row instead.
    with pytest.raises(RecordError, match="unknown_label"):
        food101_label("")


def test_official_quirk_food101_cheesecake_is_16():
    # The official name-to-label map puts cheesecake before cheese_plate.
    assert (food101_label("cheesecake"), food101_label("cheese_plate")) == ("16", "17")


def test_text_and_list_labels():
    # Kept as written, empty labels included: the official comparisons see them so.
    assert text_label(" left lung ") == " left lung "
    assert text_label(3) == "3"
    assert text_label("") == ""
    with pytest.raises(RecordError, match="missing_field"):
        text_label(None)
    with pytest.raises(RecordError, match="bad_label"):
        text_label(["a"])
    assert list_label(["rice", 4]) == ["rice", 4]
    assert list_label('["rice", "egg"]') == ["rice", "egg"]
    assert list_label("rice") == ["rice"]
    assert list_label("") == []
    with pytest.raises(RecordError, match="bad_label"):
        list_label([{"name": "rice"}])


def test_labels_round_trip_through_the_stored_text():
    spec = get_task("foodseg103")
    stored = {"prediction": "rice and egg", "label": spec.encode_label(["rice", "egg"]), "options": None}
    assert spec.scoring_row(stored)["label"] == ["rice", "egg"]
    choice = get_task("pmc_vqa")
    stored = {"prediction": "(B)", "label": "B", "options": '{"A": "x", "B": "y"}'}
    assert choice.scoring_row(stored)["options"] == {"A": "x", "B": "y"}


def test_summary_uses_the_given_example_indexes():
    spec = get_task("pmc_vqa")
    options = {"A": "alpha", "B": "beta", "C": "gamma", "D": "delta"}
    # No choice in the answer: the guess is random.Random(index).choice(...), so the index decides the score.
    row = {"prediction": "???", "label": "A", "options": options}
    by_index = {index: spec.summarize([(index, row)])["accuracy"] for index in range(8)}
    assert set(by_index.values()) == {0.0, 100.0}
    assert spec.summarize([(3, row)])["parse_fallbacks"] == 1


def test_summary_counts_errors_and_unscorable_rows():
    spec = get_task("vqa_rad")
    rows = [
        (0, {"prediction": "yes", "label": "yes", "answer_type": "CLOSED"}),
        (1, {"prediction": None, "label": "no", "answer_type": "CLOSED", "error": "corrupt_image: truncated"}),
        (2, {"prediction": "lung", "label": None, "answer_type": "OPEN", "error": "missing_field: no 'label'"}),
    ]
    summary = spec.summarize(rows)
    assert summary == {"n": 2, "open_recall": None, "closed_accuracy": 50.0, "n_open": 0, "n_closed": 2,
                       "errors": 2, "error_pct": 66.67, "unscorable": 1}


def test_official_quirk_empty_label_counts_in_the_mean():
    spec = get_task("recipe1m")
    rows = [(0, {"prediction": "a bowl of soup", "label": spec.label("a bowl of soup")}),  # identical -> 100
            (1, {"prediction": "a bowl of soup", "label": spec.label("")})]  # the package raises -> 0, counted
    # (100 + 0) / 2 = 50, over both rows.
    assert spec.summarize(rows) == {"n": 2, "rouge_l": pytest.approx(50.0)}
