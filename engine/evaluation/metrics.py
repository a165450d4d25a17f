"""Per-example metrics of the evaluation benchmarks, as DESIGN.md section 4 (Evaluation) states them.

The numbers must be those of the paper's released evaluation code (github.com/bigai-ai/QA-Synthesizer,
vllm_inference/utils: metric.py, task.py, llava_med/glossary.py and evaluate_metrics.py) on every input, its defects
included, since the paper's scores came from it. Each place where that code does something odd is marked "Official
quirk:" below, with what it does; DESIGN.md section 4 lists them all. (The code is read, never copied: its licence is
non-commercial.)

- Medical VQA (VQA-RAD, SLAKE, PathVQA): LLaVA-Med's answer normalization, recall over words for open questions and a
  yes/no substring hit for closed ones.
- Multiple choice (PMC-VQA, Food101, remote-sensing classification): MMMU's response parser, which finds the chosen
  option and falls back to a seeded random choice when it finds none.
- Captioning (Recipe1M, NWPU-Captions): ROUGE-L F as the PyPI package `rouge` 1.0.1 computes it.
- Multi-label (FoodSeg103, Nutrition5K): a longest-name-first parser, per-image F1 and recall over class ids.

Every function returns a raw value (a fraction in [0, 1], a bool or a parsed answer); scaling to x100 and averaging
belong to the scorers. Predictions may be None (a failed request, which the official code never saw): they are read
as an empty answer and score 0 (or fall back), never raise.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import cache

# ---------------------------------------------------------------------------------------------------------------------
# VQA answer normalization (LLaVA-Med's `normalize_word`)

# Marks that are either deleted or turned into a space; periods, colons and apostrophes are handled apart (or kept).
_PUNCTUATION_MARKS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                      "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# Official quirk: the period substitution is called as `sub("", text, re.UNICODE)`, so the flag's value, 32, lands in
# the `count` argument: at most 32 periods are deleted per normalization and any later ones stay in the words.
_PERIODS_DELETED_PER_PASS = int(re.UNICODE)
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})

# Official quirk: the contraction table is the standard VQA evaluation table, with its oddities: it maps half-joined
# spellings ("couldnt've", "hed've", "notve") but not fully joined ones ("couldntve"), maps "somebody'd" the wrong way
# round (to "somebodyd"), and some keys ("Im", "Ive", "Id've", "I'dve") are capitalised, so they never match the
# lower-cased words they are looked up with: "im" stays "im". Written below as "expansion: spellings;" groups.
_CONTRACTION_TABLE = """
    ain't: aint; aren't: arent; can't: cant; could've: couldve; couldn't: couldnt;
    couldn't've: couldn'tve couldnt've; didn't: didnt; doesn't: doesnt; don't: dont; hadn't: hadnt;
    hadn't've: hadnt've hadn'tve; hasn't: hasnt; haven't: havent; he'd: hed; he'd've: hed've he'dve; he's: hes;
    how'd: howd; how'll: howll; how's: hows; I'd've: Id've I'dve; I'm: Im; I've: Ive; isn't: isnt; it'd: itd;
    it'd've: itd've it'dve; it'll: itll; let's: let's; ma'am: maam; might've: mightve; mightn't: mightnt;
    mightn't've: mightnt've mightn'tve; must've: mustve; mustn't: mustnt; needn't: neednt; not've: notve;
    o'clock: oclock; oughtn't: oughtnt; 'ow's'at: ow's'at 'ows'at 'ow'sat; shan't: shant;
    she'd've: shed've she'dve; she's: she's; should've: shouldve; shouldn't: shouldnt;
    shouldn't've: shouldnt've shouldn'tve; somebody'd've: somebodyd've somebody'dve; somebody'll: somebodyll;
    somebody's: somebodys; somebodyd: somebody'd; someone'd: someoned; someone'd've: someoned've someone'dve;
    someone'll: someonell; someone's: someones; something'd: somethingd;
    something'd've: somethingd've something'dve; something'll: somethingll; that's: thats; there'd: thered;
    there'd've: thered've there'dve; there're: therere; there's: theres; they'd: theyd;
    they'd've: theyd've they'dve; they'll: theyll; they're: theyre; they've: theyve; 'twas: twas; wasn't: wasnt;
    we'd've: wed've we'dve; we've: weve; weren't: werent; what'll: whatll; what're: whatre; what's: whats;
    what've: whatve; when's: whens; where'd: whered; where's: wheres; where've: whereve; who'd: whod;
    who'd've: whod've who'dve; who'll: wholl; who's: whos; who've: whove; why'll: whyll; why're: whyre;
    why's: whys; won't: wont; would've: wouldve; wouldn't: wouldnt; wouldn't've: wouldnt've wouldn'tve;
    y'all: yall; y'all'd've: yall'd've y'alld've y'all'dve; y'all'll: yall'll y'allll; you'd: youd;
    you'd've: youd've you'dve; you'll: youll; you're: youre; you've: youve
"""
_CONTRACTIONS = {
    spelling: expansion.strip()
    for group in _CONTRACTION_TABLE.split(";")
    for expansion, spellings in [group.split(":")]
    for spelling in spellings.split()
}


def _as_text(value: object) -> str:
    return "" if value is None else str(value)


def _remove_punctuation(text: str) -> str:
    # Every decision looks at the ORIGINAL text: a mark next to a space is noise to delete, a mark inside a word
    # ("left-sided") separates words. A number like "1,000" anywhere makes every mark deletable, so digits stay joined.
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    cleaned = text
    for mark in _PUNCTUATION_MARKS:
        touches_space = f"{mark} " in text or f" {mark}" in text
        cleaned = cleaned.replace(mark, "" if delete_all or touches_space else " ")
    # Commas are among the marks above, so none survive to be deleted later.
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", cleaned, count=_PERIODS_DELETED_PER_PASS)


def _normalize_word(word: str) -> str | None:
    word = _NUMBER_WORDS.get(word, word)
    if word in _ARTICLES:
        return None
    return _CONTRACTIONS.get(word, word)


def normalize_answer(text: str | None) -> str:
    """The normalized form of a VQA answer (lowercase words joined by single spaces; "" for None)."""
    words = (_normalize_word(word) for word in _remove_punctuation(_as_text(text)).lower().split())
    return " ".join(word for word in words if word is not None)


# ---------------------------------------------------------------------------------------------------------------------
# Medical VQA metrics


def _vqa_answer(text: str | None) -> str:
    # The official loop lower-cases each answer BEFORE normalizing it. Not quite a no-op: a Greek capital sigma
    # lower-cases to its final form or not depending on the characters around it, which punctuation removal changes.
    return normalize_answer(_as_text(text).lower())


def open_recall(prediction: str | None, label: str | None) -> float:
    """Word recall of an open answer: tp / (tp + fn) on normalized word counts.

    tp counts each shared word as often as the PREDICTION repeats it; fn counts each label word the prediction lacks as
    often as the label has it. 0 when either text is empty or nothing is shared.
    """
    # Official quirk: open answers are normalized twice (by the task's loop, then again inside LLaVA-Med's
    # `calculate_f1score`); only periods beyond the first 32 and the words they hid are affected by the second pass.
    predicted = Counter(normalize_answer(_vqa_answer(prediction)).split())
    expected = Counter(normalize_answer(_vqa_answer(label)).split())
    if not predicted or not expected:
        return 0.0
    true_positives = sum(count for word, count in predicted.items() if word in expected)
    false_negatives = sum(count for word, count in expected.items() if word not in predicted)
    if true_positives == 0:
        return 0.0
    return true_positives / (true_positives + false_negatives)


def closed_hit(prediction: str | None, label: str | None) -> bool:
    """Whether a closed (yes/no) answer is right: it says "yes" or "no" and contains the label.

    Both tests are substring tests on normalized text, as in the paper: "know" contains "no", and an empty label is
    contained in every prediction.
    """
    predicted = _vqa_answer(prediction)
    answers_yes_or_no = "yes" in predicted or "no" in predicted
    return answers_yes_or_no and _vqa_answer(label) in predicted


# ---------------------------------------------------------------------------------------------------------------------
# Multiple choice

_EDGE_PUNCTUATION = ",.!?;:'"
# Option texts are only searched for in responses longer than this (counted with the padding spaces), so that a
# one-word reply is not matched against option wording by accident.
_MIN_LENGTH_FOR_TEXT_MATCH = 5


def _last_positions(haystack: str, needles: Mapping[str, str]) -> dict[str, int]:
    """For each choice whose needle occurs in the haystack, where its last occurrence starts."""
    positions = {choice: haystack.rfind(needle) for choice, needle in needles.items()}
    return {choice: position for choice, position in positions.items() if position >= 0}


def _strip_edges(response: str) -> str:
    # Official quirk: the marks are stripped one kind at a time, in this order, not as a set: "B.:" loses its ":" but
    # keeps its ".", since "." was tried while ":" still ended the text.
    for mark in _EDGE_PUNCTUATION:
        response = response.strip(mark)
    return response


def _matches_by_option_text(padded: str, options: Mapping[str, str]) -> dict[str, int]:
    if len(padded) <= _MIN_LENGTH_FOR_TEXT_MATCH:
        return {}
    # Official quirk: an empty option text is searched for too. It is in every response and its last occurrence is at
    # the very end, later than any other option's, so it wins this stage whenever the stage is reached.
    needles = {choice: text.lower() for choice, text in options.items()}
    return _last_positions(padded.lower(), needles)


def parse_choice(response: str | None, options: Mapping[str, str], example_index: int) -> tuple[str, bool]:
    """The option a free-text response picks, and whether it had to be guessed.

    Tries, in order, "(X)", then " X " (case-sensitive), then each option's text (case-insensitive, responses longer
    than 5 characters only, an empty option text matching every response); among several candidates of the first form
    that matches, the one whose last occurrence is latest wins (ties: the earlier option). With no candidate, a choice
    drawn by random.Random(example_index), so a rerun guesses the same; the second value is then True. The choices
    are the keys of `options`, in order: the guess draws from them.
    """
    texts = {str(choice): _as_text(text) for choice, text in options.items()}
    if not texts:
        raise ValueError("parse_choice needs at least one option")
    padded = f" {_strip_edges(_as_text(response))} "
    matches = (
        _last_positions(padded, {choice: f"({choice})" for choice in texts})
        or _last_positions(padded, {choice: f" {choice} " for choice in texts})
        or _matches_by_option_text(padded, texts)
    )
    if matches:
        return max(matches, key=matches.__getitem__), False
    return random.Random(example_index).choice(list(texts)), True


# ---------------------------------------------------------------------------------------------------------------------
# Captioning


@cache
def _rouge():
    """The `rouge` scorer, imported on first use: only captioning needs the package, so the lmms-eval tasks exported
    for the other kinds (which copy this module) run where it is not installed."""
    from rouge import Rouge

    return Rouge(metrics=["rouge-l"], stats=["f"])


def rouge_l(prediction: str | None, label: str | None) -> float:
    """ROUGE-L F of the prediction against the label, as `rouge` 1.0.1 computes it; 0 when the package fails."""
    scorer = _rouge()  # outside the try: a missing package must fail loudly, not score every caption 0
    try:
        return float(scorer.get_scores(_as_text(prediction), _as_text(label))[0]["rouge-l"]["f"])
    # The package raises on empty texts (and on texts it splits into nothing); the paper scored those as 0.
    except Exception:
        return 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Multi-label


def _names_longest_first(names: Mapping[int, str]) -> list[tuple[int, str]]:
    # Longest name first, names of equal length in id order: the official sort is stable over a map in id order, and
    # measures the name as written, before lower-casing.
    return sorted(names.items(), key=lambda item: (-len(item[1]), item[0]))


def parse_labels(text: str | None, names: Mapping[int, str]) -> set[int]:
    """The class ids (keys of `names`, id -> class name) named in a free-text answer.

    Names are tried longest first; each name found is recorded and all its occurrences deleted, so "apple pie" does
    not also count as "apple". Matching is case-insensitive and by substring.
    """
    remaining = _as_text(text).lower()
    found: set[int] = set()
    # Official quirk: names are tried per id, so of several ids sharing a name (Nutrition5K's four "deprecated") only
    # the first is recorded: its match deletes the name before the others are tried.
    for class_id, name in _names_longest_first(names):
        if name.lower() in remaining:
            found.add(class_id)
            remaining = remaining.replace(name.lower(), "")
    return found


# Written by hand rather than with scikit-learn: on id sets these are three set sizes, whereas sklearn would need dense
# 0/1 vectors per image and its zero_division setting to express the "1.0 on an empty denominator" rule.
def _confusion_counts(predicted_ids: Iterable[int], label_ids: Iterable[int],
                      class_ids: Iterable[int]) -> tuple[int, int, int]:
    scored = set(class_ids)
    predicted = set(predicted_ids) & scored
    expected = set(label_ids) & scored
    return len(predicted & expected), len(predicted - expected), len(expected - predicted)


def per_image_f1(predicted_ids: Iterable[int], label_ids: Iterable[int], class_ids: Iterable[int]) -> float:
    """F1 = 2tp / (2tp + fp + fn) over the given class ids (others ignored); 1.0 when both sides are empty."""
    true_positives, false_positives, false_negatives = _confusion_counts(predicted_ids, label_ids, class_ids)
    denominator = 2 * true_positives + false_positives + false_negatives
    return 2 * true_positives / denominator if denominator else 1.0


def per_image_recall(predicted_ids: Iterable[int], label_ids: Iterable[int], class_ids: Iterable[int]) -> float:
    """Recall = tp / (tp + fn) over the given class ids (others ignored); 1.0 when the label has none of them."""
    true_positives, _, false_negatives = _confusion_counts(predicted_ids, label_ids, class_ids)
    denominator = true_positives + false_negatives
    return true_positives / denominator if denominator else 1.0
