"""Per-example metrics of the evaluation benchmarks, as DESIGN.md section 4 (Evaluation) states them.

- Medical VQA (VQA-RAD, SLAKE, PathVQA): answer normalization in the style of LLaVA-Med, recall over words for open
  questions and a yes/no substring hit for closed ones.
- Multiple choice (PMC-VQA, Food101, remote-sensing classification): a response parser that finds the chosen option
  and falls back to a seeded random choice when it finds none.
- Captioning (Recipe1M, NWPU-Captions): ROUGE-L F as the PyPI package `rouge` 1.0.1 computes it.
- Multi-label (FoodSeg103, Nutrition5K): a longest-name-first parser, per-image F1 and recall over class ids.

Every function returns a raw value (a fraction in [0, 1], a bool or a parsed answer); scaling to x100 and averaging
belong to the scorers. Predictions may be None or empty: they score 0 (or fall back), never raise.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from rouge import Rouge

# ---------------------------------------------------------------------------------------------------------------------
# VQA answer normalization

# Marks that are either deleted or turned into a space; periods, colons and apostrophes are handled apart (or kept).
_PUNCTUATION_MARKS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                      "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})

# Contractions whose run-together spelling (apostrophe dropped) a model may write. Left out on purpose: those whose
# run-together form is an ordinary word (she'd/shed, we'll/well, we're/were, it's/its, I'll/ill, let's/lets,
# who're/whore, ...), since expanding them would corrupt correct answers.
_CONTRACTED_FORMS = """
    ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd he'd've
    he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't
    must've needn't o'clock oughtn't shan't she'd've she's should've shouldn't shouldn't've somebody'd somebody'll
    somebody's someone'd someone'll someone's something'd something'll that's there'd there're there's they'd they'll
    they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd where's where've
    who'd who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all you'd you'll you're you've
""".split()
_CONTRACTIONS = {form.replace("'", ""): form for form in _CONTRACTED_FORMS}


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
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", cleaned)


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


def open_recall(prediction: str | None, label: str | None) -> float:
    """Word recall of an open answer: tp / (tp + fn) on normalized word counts.

    tp counts each shared word as often as the PREDICTION repeats it; fn counts each label word the prediction lacks as
    often as the label has it. 0 when either text is empty or nothing is shared.
    """
    predicted = Counter(normalize_answer(prediction).split())
    expected = Counter(normalize_answer(label).split())
    if not predicted or not expected:
        return 0.0
    true_positives = sum(count for word, count in predicted.items() if word in expected)
    false_negatives = sum(count for word, count in expected.items() if word not in predicted)
    if true_positives == 0:
        return 0.0
    return true_positives / (true_positives + false_negatives)


def closed_hit(prediction: str | None, label: str | None) -> bool:
    """Whether a closed (yes/no) answer is right: it says "yes" or "no" and contains the label.

    Both tests are substring tests on normalized text, as in the paper: "know" contains "no".
    """
    predicted = normalize_answer(prediction)
    expected = normalize_answer(label)
    answers_yes_or_no = "yes" in predicted or "no" in predicted
    return answers_yes_or_no and expected in predicted


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


def _matches_by_option_text(padded: str, options: Mapping[str, str]) -> dict[str, int]:
    if len(padded) <= _MIN_LENGTH_FOR_TEXT_MATCH:
        return {}
    # An empty option text is a substring of everything; it cannot tell choices apart.
    needles = {choice: text.lower() for choice, text in options.items() if text}
    return _last_positions(padded.lower(), needles)


def parse_choice(response: str | None, options: Mapping[str, str], example_index: int) -> tuple[str, bool]:
    """The option a free-text response picks, and whether it had to be guessed.

    Tries, in order, "(X)", then " X " (case-sensitive), then each option's text (case-insensitive, responses longer
    than 5 characters only); among several candidates of the first form that matches, the one whose last occurrence
    is latest wins (ties: the earlier option). With no candidate, a choice drawn by random.Random(example_index), so a
    rerun guesses the same; the second value is then True.
    """
    texts = {str(choice): _as_text(text) for choice, text in options.items()}
    if not texts:
        raise ValueError("parse_choice needs at least one option")
    padded = f" {_as_text(response).strip(_EDGE_PUNCTUATION)} "
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

_ROUGE = Rouge(metrics=["rouge-l"], stats=["f"])


def rouge_l(prediction: str | None, label: str | None) -> float:
    """ROUGE-L F of the prediction against the label, as `rouge` 1.0.1 computes it; 0 when the package fails."""
    try:
        return float(_ROUGE.get_scores(_as_text(prediction), _as_text(label))[0]["rouge-l"]["f"])
    # The package raises on empty texts (and on texts it splits into nothing); the paper scored those as 0.
    except Exception:
        return 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Multi-label


@lru_cache(maxsize=8)
def _names_longest_first(vocabulary: tuple[str, ...]) -> tuple[tuple[str, frozenset[int]], ...]:
    # A name may be shared by several ids (Nutrition5k's retired ids are all "deprecated"); one match records them all.
    ids_by_name: dict[str, set[int]] = {}
    for class_id, name in enumerate(vocabulary):
        if name.strip():
            ids_by_name.setdefault(name.lower(), set()).add(class_id)
    ordered = sorted(ids_by_name.items(), key=lambda item: -len(item[0]))
    return tuple((name, frozenset(ids)) for name, ids in ordered)


def parse_labels(text: str | None, vocabulary: Sequence[str]) -> set[int]:
    """The class ids (positions in `vocabulary`) named in a free-text answer.

    Names are tried longest first; each name found is recorded and all its occurrences deleted, so "apple pie" does
    not also count as "apple". Matching is case-insensitive and by substring.
    """
    remaining = _as_text(text).lower()
    found: set[int] = set()
    for name, class_ids in _names_longest_first(tuple(vocabulary)):
        if name in remaining:
            found |= class_ids
            remaining = remaining.replace(name, "")
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
