"""Unit tests of engine.evaluation.metrics on hand-computed cases (the arithmetic is in the comments).

Each oddity of the paper's released evaluation code that the engine reproduces on purpose has its own test, named
"official_quirk"; the expected values follow from the official formulas by hand.
"""

from __future__ import annotations

import pytest

from engine.evaluation.metrics import (
    closed_hit,
    normalize_answer,
    open_recall,
    parse_choice,
    parse_labels,
    per_image_f1,
    per_image_recall,
    rouge_l,
)

LETTER_OPTIONS = {"A": "pneumothorax", "B": "pleural effusion", "C": "cardiomegaly", "D": "atelectasis"}


# ---------------------------------------------------------------------------------------------------------------------
# normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # "-" sits inside a word -> becomes a space; "(" follows a space -> deleted; ")" touches no space -> space.
        ("left-sided (mass)", "left sided mass"),
        # No mark touches a space and there is no digit-comma-digit: "/" becomes a space.
        ("cells/mm", "cells mm"),
        # "1,000" is a digit-comma-digit, so EVERY mark is deleted, "/" included: "cellsmm".
        ("1,000 cells/mm", "1000 cellsmm"),
        # "," is followed by a space -> deleted (not spaced), "?" likewise.
        ("yes, it is ?", "yes it is"),
        # A period before a digit stays ("3.5"); others go ("cm." -> "cm", "e.g." -> "eg").
        ("3.5 cm.", "3.5 cm"),
        ("e.g. this", "eg this"),
        # Lowercased first, then number words: two -> 2, none -> 0 ("," deleted since a space follows it).
        ("Two lesions, none seen", "2 lesions 0 seen"),
        ("ZERO or Ten", "0 or 10"),
        # Articles a/an/the are dropped.
        ("The heart is an organ with a wall", "heart is organ with wall"),
        # Run-together contractions in the VQA table are expanded; "well" is not in it and is left alone.
        ("it doesnt show, well", "it doesn't show well"),
        ("Dont know", "don't know"),
        # Colons and apostrophes stay.
        ("ratio 2:1 isn't", "ratio 2:1 isn't"),
        # Runs of whitespace collapse to single spaces; "a" is an article.
        ("  a   b \t c  ", "b c"),
        ("", ""),
        (None, ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        # The table's keys "Im", "Ive", "Id've" are capitalised and words are looked up lower-cased: never expanded.
        ("im", "im"),
        ("Ive", "ive"),
        ("Id've", "id've"),
        # Half-joined spellings are in the table, the fully joined one is not.
        ("notve", "not've"),
        ("couldnt've", "couldn't've"),
        ("hed've", "he'd've"),
        ("couldntve", "couldntve"),
        # One entry maps the apostrophe form to the joined one.
        ("somebody'd", "somebodyd"),
    ],
)
def test_official_quirk_contraction_table(word, expected):
    assert normalize_answer(word) == expected


def test_official_quirk_at_most_32_periods_deleted_per_pass():
    # 40 periods after the word, none before a digit: the first 32 are deleted, 8 stay.
    assert normalize_answer("effusion" + "." * 40) == "effusion" + "." * 8


# ---------------------------------------------------------------------------------------------------------------------
# open_recall


def test_open_recall_counts_repeated_prediction_words():
    # label {left:1, lung:1}, prediction {lung:2}: tp = prediction's count of "lung" = 2, fn = "left" = 1 -> 2/3.
    assert open_recall("lung lung", "left lung") == pytest.approx(2 / 3)


def test_open_recall_partial_answer():
    # label {right, upper, lobe}, prediction "the lobe" -> {lobe}: tp = 1, fn = 2 -> 1/3.
    assert open_recall("the lobe", "right upper lobe") == pytest.approx(1 / 3)


def test_open_recall_ignores_extra_prediction_words():
    # "there is mass in liver" vs {liver}: tp = 1, fn = 0 -> 1.0 (precision does not enter recall).
    assert open_recall("There is a mass in the liver.", "liver") == 1.0


def test_open_recall_matches_after_normalization():
    # Both normalize to "left lung": tp = 2, fn = 0 -> 1.0.
    assert open_recall("Left-lung.", "left lung") == 1.0


def test_open_recall_nothing_shared_is_zero():
    assert open_recall("kidney", "liver") == 0.0


@pytest.mark.parametrize(("prediction", "label"), [("", "liver"), (None, "liver"), ("liver", ""), ("the", "liver")])
def test_open_recall_empty_text_is_zero(prediction, label):
    # "the" normalizes to nothing, so it counts as empty.
    assert open_recall(prediction, label) == 0.0


def test_official_quirk_contractions_in_open_recall():
    # "im" stays "im" ("Im" never matches), the label "i'm" stays "i'm": nothing shared -> 0.
    assert open_recall("im", "i'm") == 0.0
    # "notve" -> "not've" == the label's "not've": tp 1, fn 0 -> 1.0.
    assert open_recall("notve", "not've") == 1.0


@pytest.mark.parametrize(
    ("prediction", "label", "expected"),
    [
        # 64 periods: the first pass deletes 32, the second the other 32 -> "effusion" -> tp 1, fn 0 -> 1.0.
        ("effusion" + "." * 64, "effusion", 1.0),
        # 70 periods: 70 - 32 - 32 = 6 stay -> "effusion......" is not "effusion" -> 0.
        ("effusion" + "." * 70, "effusion", 0.0),
        # 32 periods, then " one.": pass 1 deletes the 32 and keeps "one."; pass 2 deletes its period, and "one" -> "1".
        ("." * 32 + " one.", "1", 1.0),
    ],
)
def test_official_quirk_open_answers_are_normalized_twice(prediction, label, expected):
    assert open_recall(prediction, label) == expected


# ---------------------------------------------------------------------------------------------------------------------
# closed_hit


def test_closed_hit_yes():
    # "Yes, it is." -> "yes it is": contains "yes" and the label "yes".
    assert closed_hit("Yes, it is.", "Yes") is True


def test_closed_hit_no_as_substring_of_know():
    # "i know" contains "no" (inside "know"), and the label "no" is a substring too: a hit, as in the paper.
    assert closed_hit("I know", "no") is True


def test_closed_hit_wrong_answer():
    # "yes" does not contain the label "no".
    assert closed_hit("yes", "no") is False


def test_closed_hit_needs_yes_or_no():
    # The label is there, but neither "yes" nor "no" is.
    assert closed_hit("left", "left") is False


@pytest.mark.parametrize("prediction", ["", None])
def test_closed_hit_empty_prediction_misses(prediction):
    assert closed_hit(prediction, "yes") is False


def test_official_quirk_closed_answers_are_normalized_once():
    # 33 periods: one pass deletes the 32 leading ones and keeps "ye.s", which contains neither "yes" nor "no" -> miss
    # (a second pass, as open answers get, would have made it "yes").
    assert closed_hit("." * 32 + " ye.s", "yes") is False


def test_closed_hit_empty_label_is_in_every_answer():
    # "" is a substring of every text: any answer containing "yes" or "no" hits.
    assert closed_hit("No.", "") is True
    assert closed_hit("maybe", "") is False


# ---------------------------------------------------------------------------------------------------------------------
# parse_choice


def test_parse_choice_bracketed_letter():
    assert parse_choice("(B) is correct", LETTER_OPTIONS, 0) == ("B", False)


def test_parse_choice_bare_letter_after_stripping_edge_punctuation():
    # "The answer is C." -> strip -> " The answer is C " contains " C ".
    assert parse_choice("The answer is C.", LETTER_OPTIONS, 0) == ("C", False)
    # "'D'" -> strip both quotes -> " D ".
    assert parse_choice("'D'", LETTER_OPTIONS, 0) == ("D", False)


def test_parse_choice_bracket_form_wins_over_bare_letters():
    # "(A)" is found, so the later bare " B " is never considered.
    assert parse_choice("(A), although B is tempting", LETTER_OPTIONS, 0) == ("A", False)


def test_parse_choice_latest_last_occurrence_wins():
    # " (A) is wrong, (B) is right ": last "(A)" at 1, last "(B)" at 15 -> B.
    assert parse_choice("(A) is wrong, (B) is right", LETTER_OPTIONS, 0) == ("B", False)
    # " (B) or (A), I pick (B) ": last "(A)" at 8, last "(B)" at 20 -> B (its LAST occurrence counts, not its first).
    assert parse_choice("(B) or (A), I pick (B)", LETTER_OPTIONS, 0) == ("B", False)
    # Bare letters: " A or B " -> " A " at 0, " B " at 5 -> B.
    assert parse_choice("A or B", LETTER_OPTIONS, 0) == ("B", False)


def test_parse_choice_options_given_as_text():
    # No letter form; padded response is long, "pleural effusion" is the only option text in it -> B.
    assert parse_choice("It looks like a Pleural Effusion", LETTER_OPTIONS, 0) == ("B", False)
    # Two option texts: "pleural effusion" last starts at 5, "pneumothorax" at 30 -> A.
    assert parse_choice("not pleural effusion, rather pneumothorax", LETTER_OPTIONS, 0) == ("A", False)


def test_parse_choice_letters_are_case_sensitive():
    # " c " is not " C ", and no option text appears, so the parser falls back: Random(7).choice("ABCD") is "C".
    assert parse_choice("the answer is c", LETTER_OPTIONS, 7) == ("C", True)


def test_parse_choice_text_match_needs_more_than_five_characters():
    options = {"A": "lung", "B": "rib"}
    # " lung " is 6 characters > 5 -> the text rule applies -> A.
    assert parse_choice("lung", options, 0) == ("A", False)
    # " rib " is 5 characters, not > 5 -> no text rule -> fallback; Random(1).choice(["A", "B"]) is "A".
    assert parse_choice("rib", options, 1) == ("A", True)


def test_parse_choice_fallback_is_seeded_by_example_index():
    # No form matches. random.Random(0).choice(["A","B","C","D"]) == "D", random.Random(1).choice(...) == "B".
    assert parse_choice("I am not sure", LETTER_OPTIONS, 0) == ("D", True)
    assert parse_choice("I am not sure", LETTER_OPTIONS, 1) == ("B", True)
    # Same index, same guess.
    assert parse_choice("something else entirely", LETTER_OPTIONS, 0) == ("D", True)


@pytest.mark.parametrize("response", ["", None, "   ", "..."])
def test_parse_choice_empty_response_falls_back(response):
    # Random(3).choice(["A","B","C","D"]) == "B".
    assert parse_choice(response, LETTER_OPTIONS, 3) == ("B", True)


def test_parse_choice_numeric_choices_do_not_match_inside_longer_numbers():
    options = {str(i): f"class {i}" for i in range(101)}
    # " The answer is 12 " contains " 12 " but not " 1 " or " 2 " -> "12".
    assert parse_choice("The answer is 12", options, 0) == ("12", False)


def test_official_quirk_edge_marks_are_stripped_one_kind_at_a_time():
    # "B.:": "." is tried while ":" still ends the text, then ":" goes -> " B. " has no " B " and is 4 characters
    # (not > 5) -> fallback: Random(0).choice(["A","B","C","D"]) == "D".
    assert parse_choice("B.:", LETTER_OPTIONS, 0) == ("D", True)
    # "B:.": "." goes first, then ":" -> " B " -> B.
    assert parse_choice("B:.", LETTER_OPTIONS, 0) == ("B", False)


def test_official_quirk_empty_option_text_wins():
    # " The femur is fractured " (24 characters): no "(X)", no " X "; by text, "femur" last starts at 5 and the empty
    # text D at 24, the end -> D, although the answer names A.
    options = {"A": "femur", "B": "tibia", "C": "fibula", "D": ""}
    assert parse_choice("The femur is fractured", options, 0) == ("D", False)
    # The same with the empty text first: " there is an effusion " (22): "" at 22, "effusion" at 13 -> A.
    assert parse_choice("there is an effusion", {"A": "", "B": "effusion"}, 0) == ("A", False)


def test_parse_choice_without_options_is_an_error():
    with pytest.raises(ValueError):
        parse_choice("A", {}, 0)


# ---------------------------------------------------------------------------------------------------------------------
# rouge_l (the package counts DISTINCT words)


def test_rouge_l_identical_texts():
    # P = R = 1 -> F = 2PR/(P+R+1e-8) = 2/(2+1e-8).
    assert rouge_l("a bowl of soup", "a bowl of soup") == pytest.approx(1.0)


def test_rouge_l_uses_distinct_words():
    # hyp "the cat sat on the mat" has 5 distinct words {the, cat, sat, on, mat}; ref "the cat is on the mat" too.
    # LCS = "the cat on the mat", distinct words {the, cat, on, mat} = 4 -> P = R = 4/5 -> F = 0.8.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(0.8)


def test_rouge_l_asymmetric_lengths():
    # hyp "the cat" (2 words), ref "the cat sat down" (4): LCS 2 -> P = 1, R = 1/2 -> F = 2 * 0.5 / 1.5 = 2/3.
    assert rouge_l("the cat", "the cat sat down") == pytest.approx(2 / 3)


@pytest.mark.parametrize(("prediction", "label"), [("", "soup"), (None, "soup"), ("...", "soup"), ("soup", "")])
def test_rouge_l_errors_score_zero(prediction, label):
    # The package raises on an empty hypothesis or reference ("..." splits into no sentence).
    assert rouge_l(prediction, label) == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# parse_labels

FRUIT_VOCABULARY = dict(enumerate(["apple", "apple pie", "pie", "Banana Split", "banana"]))


def test_parse_labels_longest_name_first():
    # "apple pie" (9 chars) is matched first and deleted, leaving no "apple" and no "pie" -> {1}.
    assert parse_labels("apple pie", FRUIT_VOCABULARY) == {1}


def test_parse_labels_records_remaining_shorter_names():
    # "apple pie" -> id 1, deleted; " and an apple" still holds "apple" -> id 0; "pie" is gone -> {0, 1}.
    assert parse_labels("apple pie and an apple", FRUIT_VOCABULARY) == {0, 1}


def test_parse_labels_is_case_insensitive_on_both_sides():
    # Text and the name "Banana Split" are both lowercased; "banana" is deleted with it -> {3}.
    assert parse_labels("A BANANA SPLIT", FRUIT_VOCABULARY) == {3}


def test_parse_labels_matches_substrings():
    # Substring semantics: "pineapple" contains "apple" -> {0}.
    assert parse_labels("pineapple", FRUIT_VOCABULARY) == {0}


def test_official_quirk_shared_name_records_its_first_id():
    # Names are tried per id: id 1 matches and deletes "deprecated", so id 3 finds nothing left.
    assert parse_labels("deprecated", {0: "x", 1: "deprecated", 2: "y", 3: "deprecated"}) == {1}


def test_parse_labels_reads_only_the_given_ids():
    # FoodSeg103 leaves out 0 and 103: with "other ingredients" not a name, nothing deletes it, and "candy" never forms.
    assert parse_labels("cother ingredientsandy", {1: "candy"}) == set()
    assert parse_labels("cother ingredientsandy", {1: "candy", 103: "other ingredients"}) == {1, 103}


def test_parse_labels_equal_lengths_in_id_order():
    # "ab c" (id 1) and "b cd" (id 2) are both 4 long and both in "ab cd"; id 1 goes first (the official map is in id
    # order), deletes "ab c" and leaves "d", so id 2 is not found -> {1}, whatever order the mapping lists them in.
    assert parse_labels("ab cd", {2: "b cd", 1: "ab c"}) == {1}


@pytest.mark.parametrize("text", ["", None, "nothing here"])
def test_parse_labels_no_names(text):
    assert parse_labels(text, FRUIT_VOCABULARY) == set()


# ---------------------------------------------------------------------------------------------------------------------
# per_image_f1 / per_image_recall


def test_per_image_f1():
    # classes 1..5; pred {1,2,3}, label {2,3,4}: tp = 2 (2,3), fp = 1 (1), fn = 1 (4) -> 4 / (4+1+1) = 2/3.
    assert per_image_f1({1, 2, 3}, {2, 3, 4}, range(1, 6)) == pytest.approx(2 / 3)


def test_per_image_f1_ignores_ids_outside_the_classes():
    # classes 1..3: predicted 0 and 9 are dropped -> pred {2}, label {2}: tp = 1 -> 2/2 = 1.0.
    assert per_image_f1({0, 2, 9}, {2}, range(1, 4)) == 1.0


def test_per_image_f1_zero_denominator_is_one():
    # Nothing predicted, nothing labelled: 2tp+fp+fn = 0 -> 1.0.
    assert per_image_f1(set(), set(), range(1, 4)) == 1.0
    # Only out-of-class ids on both sides count as nothing too.
    assert per_image_f1({0}, {0}, range(1, 4)) == 1.0


def test_per_image_f1_empty_prediction():
    # pred {}, label {1}: tp = 0, fn = 1 -> 0 / 1 = 0.
    assert per_image_f1(set(), {1}, range(1, 4)) == 0.0


def test_per_image_recall():
    # label {1,2}, pred {1,3}: tp = 1, fn = 1 -> 1/2 (the false positive 3 does not matter).
    assert per_image_recall({1, 3}, {1, 2}, range(0, 5)) == 0.5


def test_per_image_recall_zero_denominator_is_one():
    # Empty label: tp + fn = 0 -> 1.0, whatever was predicted.
    assert per_image_recall({1}, set(), range(0, 5)) == 1.0


def test_per_image_recall_empty_prediction():
    # label {4}: tp = 0, fn = 1 -> 0.
    assert per_image_recall(set(), {4}, range(0, 5)) == 0.0
