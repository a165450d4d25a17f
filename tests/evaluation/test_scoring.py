"""Unit tests of engine.evaluation.scoring: the task registry and x100 task scores on hand-computed rows.

Tests named "official_quirk" pin an oddity of the paper's released evaluation code that the engine reproduces.
"""

from __future__ import annotations

import pytest

from engine.evaluation.scoring import TASKS, score_example, score_predictions

LETTER_OPTIONS = {"A": "pneumothorax", "B": "pleural effusion", "C": "cardiomegaly", "D": "atelectasis"}


def test_registry_holds_the_twelve_tasks():
    assert set(TASKS) == {
        "vqa_rad", "slake", "pathvqa", "pmc_vqa", "food101", "clrs", "ucmerced", "floodnet", "recipe1m",
        "nwpu_captions", "foodseg103", "nutrition5k",
    }


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown task 'mmmu'.*floodnet.*vqa_rad"):
        score_predictions("mmmu", [])


def test_row_without_label_is_an_error():
    with pytest.raises(ValueError, match="no label"):
        score_example("recipe1m", {"prediction": "soup"}, 0)


# ---------------------------------------------------------------------------------------------------------------------
# Medical VQA


@pytest.mark.parametrize("task", ["vqa_rad", "slake", "pathvqa"])
def test_medical_vqa_scores_open_and_closed_apart(task):
    rows = [
        {"prediction": "lung lung", "label": "left lung", "answer_type": "OPEN"},  # tp 2, fn 1 -> 66.67
        {"prediction": "Liver.", "label": "liver", "answer_type": "OPEN"},  # 100
        {"prediction": "I know", "label": "no", "answer_type": "CLOSED"},  # "know" contains "no" -> 100
        {"prediction": "yes", "label": "no", "answer_type": "CLOSED"},  # 0
        {"prediction": None, "label": "yes", "answer_type": "CLOSED"},  # 0
    ]
    scores = score_predictions(task, rows)
    # open: (200/3 + 100) / 2 = 83.33; closed: (100 + 0 + 0) / 3 = 33.33.
    assert scores["open_recall"] == pytest.approx(250 / 3)
    assert scores["closed_accuracy"] == pytest.approx(100 / 3)
    assert (scores["n"], scores["n_open"], scores["n_closed"]) == (5, 2, 3)


def test_medical_vqa_without_open_rows_has_no_open_score():
    scores = score_predictions("slake", [{"prediction": "Yes", "label": "yes", "answer_type": "CLOSED"}])
    assert scores == {"n": 1, "open_recall": None, "closed_accuracy": 100.0, "n_open": 0, "n_closed": 1}


def test_medical_vqa_per_example_scores():
    row = {"prediction": "the lobe", "label": "right upper lobe", "answer_type": "OPEN"}
    # tp 1, fn 2 -> 1/3 -> 33.33.
    assert score_example("vqa_rad", row, 0) == {"open_recall": pytest.approx(100 / 3)}


@pytest.mark.parametrize("answer_type", ["other", "open", " CLOSED", None])
def test_medical_vqa_rejects_unknown_answer_type(answer_type):
    # The official loop compares the type as written: "open" is in neither mean.
    with pytest.raises(ValueError, match="OPEN or CLOSED"):
        score_example("pathvqa", {"prediction": "yes", "label": "yes", "answer_type": answer_type}, 0)


def test_official_quirk_empty_labels_are_scored_and_counted():
    rows = [
        {"prediction": "liver", "label": "liver", "answer_type": "OPEN"},  # 100
        {"prediction": "liver", "label": "", "answer_type": "OPEN"},  # empty label -> 0
        {"prediction": "No, it is not", "label": "", "answer_type": "CLOSED"},  # says "no", "" is in it -> 100
    ]
    # open (100 + 0) / 2 = 50; closed 100.
    assert score_predictions("vqa_rad", rows) == {"n": 3, "open_recall": 50.0, "closed_accuracy": 100.0,
                                                  "n_open": 2, "n_closed": 1}


# ---------------------------------------------------------------------------------------------------------------------
# Multiple choice


def test_pmc_vqa_accuracy_and_counted_fallbacks():
    rows = [
        # No form matches -> Random(0).choice("ABCD") = "D", which happens to be the label -> 100, fallback.
        {"prediction": "no idea", "label": "D", "options": LETTER_OPTIONS},
        {"prediction": "(A)", "label": "A", "options": LETTER_OPTIONS},  # 100
        {"prediction": "The answer is B.", "label": "C", "options": LETTER_OPTIONS},  # B != C -> 0
        # None -> Random(3).choice("ABCD") = "B" != "A" -> 0, fallback.
        {"prediction": None, "label": "A", "options": LETTER_OPTIONS},
    ]
    # accuracy = (100 + 100 + 0 + 0) / 4 = 50; two fallbacks.
    assert score_predictions("pmc_vqa", rows) == {"n": 4, "accuracy": 50.0, "parse_fallbacks": 2}


def test_official_quirk_pmc_vqa_always_offers_a_to_d():
    # Option D missing (a benchmark reader drops empty option columns): it is an empty text, which wins the text stage.
    options = {"A": "femur", "B": "tibia", "C": "fibula"}
    row = {"prediction": "The femur is fractured", "label": "A", "options": options}
    assert score_example("pmc_vqa", row, 0) == {"accuracy": 0.0, "choice": "D", "parse_fallback": False}
    # The guess draws from A-D too: Random(0).choice(["A","B","C","D"]) == "D".
    row = {"prediction": "??", "label": "D", "options": options}
    assert score_example("pmc_vqa", row, 0) == {"accuracy": 100.0, "choice": "D", "parse_fallback": True}


def test_multiple_choice_label_is_compared_as_written():
    # The official check is str(choice) == str(label): a label " A" never matches, an empty label misses.
    rows = [{"prediction": "(A)", "label": label, "options": LETTER_OPTIONS} for label in ("A", " A", "")]
    assert [score_example("pmc_vqa", row, 0)["accuracy"] for row in rows] == [100.0, 0.0, 0.0]


def test_multiple_choice_per_example_scores_carry_the_choice():
    row = {"prediction": "no idea", "label": "D", "options": LETTER_OPTIONS}
    assert score_example("pmc_vqa", row, 0) == {"accuracy": 100.0, "choice": "D", "parse_fallback": True}


def test_food101_defaults_to_the_101_classes():
    rows = [
        {"prediction": "This is apple pie.", "label": "0"},  # option text "apple pie" is class 0 -> 100
        {"prediction": "12", "label": 12},  # " 12 " -> "12" == str(12) -> 100
        {"prediction": "The answer is 3", "label": "4"},  # "3" != "4" -> 0
    ]
    # (100 + 100 + 0) / 3 = 66.67
    scores = score_predictions("food101", rows)
    assert scores == {"n": 3, "accuracy": pytest.approx(200 / 3), "parse_fallbacks": 0}


def test_official_quirk_food101_options_16_and_17():
    # The official name-to-label map: cheesecake 16, cheese plate 17; option texts follow it.
    assert score_example("food101", {"prediction": "This is cheesecake.", "label": "16"}, 0)["choice"] == "16"
    assert score_example("food101", {"prediction": "A cheese plate", "label": "17"}, 0)["choice"] == "17"


@pytest.mark.parametrize("task", ["clrs", "ucmerced", "floodnet"])
def test_remote_sensing_uses_the_row_options(task):
    options = {"A": "airport", "B": "beach", "C": "forest", "D": "harbor"}
    rows = [
        {"prediction": "It is an airport", "label": "A", "options": options},  # option text -> A -> 100
        {"prediction": "(D)", "label": "C", "options": options},  # 0
    ]
    assert score_predictions(task, rows) == {"n": 2, "accuracy": 50.0, "parse_fallbacks": 0}


def test_multiple_choice_row_without_options_is_an_error():
    with pytest.raises(ValueError, match="no options"):
        score_example("clrs", {"prediction": "A", "label": "A"}, 0)


def test_multiple_choice_without_rows():
    assert score_predictions("pmc_vqa", []) == {"n": 0, "accuracy": None, "parse_fallbacks": 0}


# ---------------------------------------------------------------------------------------------------------------------
# Captioning


@pytest.mark.parametrize("task", ["recipe1m", "nwpu_captions"])
def test_captioning_mean_rouge_l(task):
    rows = [
        # distinct words: LCS {the, cat, on, mat} = 4 of 5 on each side -> F = 0.8 -> 80.
        {"prediction": "the cat sat on the mat", "label": "the cat is on the mat"},
        {"prediction": None, "label": "soup"},  # 0
        {"prediction": "a soup", "label": ""},  # the package raises on an empty reference -> 0, counted
    ]
    scores = score_predictions(task, rows)
    # (80 + 0 + 0) / 3 = 26.67
    assert scores == {"n": 3, "rouge_l": pytest.approx(80 / 3)}


# ---------------------------------------------------------------------------------------------------------------------
# Multi-label


def test_foodseg103_f1_with_names_ids_and_empty_labels():
    prediction = "I see egg tart and French fries"  # -> {2 egg tart, 3 french fries}; "egg" was deleted with "egg tart"
    rows = [
        # label {2 egg tart, 1 candy}: tp 1 (2), fp 1 (3), fn 1 (1) -> 2 / (2+1+1) = 50.
        {"prediction": prediction, "label": ["egg tart", "candy"]},
        {"prediction": prediction, "label": [2, 1]},  # the same as ids -> 50
        {"prediction": prediction, "label": ["2", "1"]},  # the same as id strings -> 50
        # "background" (id 0) is parsed but not scored; empty label: 2tp+fp+fn = 0 -> 100.
        {"prediction": "just background", "label": []},
        {"prediction": None, "label": ["candy"]},  # tp 0, fn 1 -> 0
    ]
    # (50 + 50 + 50 + 100 + 0) / 5 = 50
    assert score_predictions("foodseg103", rows) == {"n": 5, "f1": pytest.approx(50.0)}


def test_official_quirk_foodseg103_parses_only_ids_1_to_102():
    # "other ingredients" (id 103) is not a name to parse, so it is not deleted and "candy" never forms: pred {},
    # label {1}: tp 0, fn 1 -> 0.
    assert score_example("foodseg103", {"prediction": "cother ingredientsandy", "label": ["candy"]}, 0) == {"f1": 0.0}


def test_foodseg103_empty_text_label_is_no_class():
    # "" names no class (the official code iterates it: no items): pred {1 candy}, label {}: 2tp+fp+fn = 1 -> 0;
    # nothing predicted either -> 0/0 -> 100.
    assert score_example("foodseg103", {"prediction": "candy", "label": ""}, 0) == {"f1": 0.0}
    assert score_example("foodseg103", {"prediction": "nothing", "label": ""}, 0) == {"f1": 100.0}


def test_foodseg103_unknown_label_name_is_an_error():
    with pytest.raises(ValueError, match="neither a class id nor a class name"):
        score_example("foodseg103", {"prediction": "cake", "label": ["spaceship"]}, 0)


def test_nutrition5k_recall():
    rows = [
        # -> {9 steak, 4 potatoes}; label {9 steak, 3 bacon}: tp 1, fn 1 -> 50.
        {"prediction": "Steak with potatoes", "label": ["steak", "bacon"]},
        {"prediction": "", "label": ["steak"]},  # tp 0, fn 1 -> 0
        {"prediction": "bacon", "label": "bacon"},  # a bare name label: tp 1, fn 0 -> 100
    ]
    # (50 + 0 + 100) / 3 = 50
    assert score_predictions("nutrition5k", rows) == {"n": 3, "recall": pytest.approx(50.0)}
    assert score_example("nutrition5k", rows[0], 0) == {"recall": pytest.approx(50.0)}


def test_official_quirk_nutrition5k_deprecated_label_and_parse_differ():
    # Ids 230, 452, 457, 469 are all "deprecated": the label maps to the LAST (469), the parser records the FIRST
    # (230): tp 0, fn 1 -> 0.
    assert score_example("nutrition5k", {"prediction": "deprecated", "label": ["deprecated"]}, 0) == {"recall": 0.0}
    # By id, the parser's 230 is found: tp 1, fn 0 -> 100.
    assert score_example("nutrition5k", {"prediction": "deprecated", "label": [230]}, 0) == {"recall": 100.0}
