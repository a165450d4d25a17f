"""Compose as released: the conclusion rule on hand-made probes, the exchanges each kind writes, and the share of each
kind over thousands of seeded draws against the release's pattern counts."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from engine.synthesis.compose import Composition, compose, conclusion_rule
from engine.synthesis.parsing import SynthesizedTask
from engine.synthesis.rows import row_seed
from engine.synthesis.templates import BASIC_PATTERNS, COT_PATTERNS

QUESTION = "Which side shows the effusion?"
INFORMATIVE = "The right costophrenic angle is blunted. A meniscus-shaped opacity fills the right lung base."
PRECISE = "Right side."
COT_TASK = SynthesizedTask(QUESTION, PRECISE, INFORMATIVE)
# Its last sentence holds "therefore " (rule 1): the basic patterns.
CONCLUDING = "Fluid fills the right base. It is therefore on the right side."
BASIC_TASK = SynthesizedTask(QUESTION, PRECISE, CONCLUDING)

# The release's pattern counts per kind (process/read_compre_pt.py, counted by hand from the lists `qa_w_cot` and
# `qa`; a draw there picks one list entry uniformly), and of the forward ones those that keep the question verbatim.
RELEASE_COT = {"forward": 119, "rationale_only": 1, "rationale_from_answer": 23, "question_answer_from_rationale": 23,
               "question_from_rationale_answer": 22, "question_rationale_from_answer": 22}
RELEASE_BASIC = {"forward": 64, "question_from_answer": 10, "question_from_image": 5}
RELEASE_VERBATIM_FORWARD = {"cot": 92, "basic": 42}

DRAWS = 6000
# Seeds as the pipeline makes them (one per row id).
SEEDS = [row_seed(0, f"row-{index:06d}") for index in range(DRAWS)]


# ------------------------------------------------------------------------------------------------ the conclusion rule


@pytest.mark.parametrize(
    ("informative", "precise", "rule"),
    [
        # "so " inside "also ": the release's substring test fires.
        ("The lesion is also visible on the left side", "Left", "informative_only"),
        # "therefore," has no space after the marker: no match; the last piece after ". " is the one tested.
        ("The scan shows bright bone. Therefore, it is a CT.", "CT", "cot_template"),
        ("Several features appear. The final diagnosis is pneumonia.", "Pneumonia", "informative_only"),
        # A line break does not split sentences: only ". " does.
        ("Findings are clear. The answer is below\nIt shows a lung", "Lung", "informative_only"),
        # "result:" is not "result ".
        ("The dish has noodles and peanuts.", "Result: pad thai", "cot_template"),
        # The precise answer is tested anywhere, case-insensitively: "also " holds "so ".
        ("The dish has noodles and peanuts.", "Also pad thai", "informative_then_precise"),
        # "!" does not end a sentence: the whole text is the last piece.
        ("So it is big! It is round", "Round", "informative_only"),
        ("It won the semifinal round", "Yes", "informative_only"),
        # "answer" at the very end has no trailing space (the text is stripped first).
        ("The cells are enlarged and the answer ", "Yes", "cot_template"),
        # A marker before the last ". " piece does not count.
        ("So it rains. The ground is wet", "Wet", "cot_template"),
        # ".So" has no space after the period: no split, "so " is in the one piece.
        ("It is wet.So it rains", "Rain", "informative_only"),
        ("A round, fluid-filled lesion sits in the liver.", "It could be a cyst", "informative_then_precise"),
        ("THUS THE FIELD FLOODS", "Flood", "informative_only"),
        # Rule 1 is checked first.
        ("Trees everywhere, so the land cover is forest.", "So, forest.", "informative_only"),
    ],
)
def test_conclusion_rule_is_the_releases_substring_test(informative, precise, rule):
    assert conclusion_rule(SynthesizedTask("Q?", precise, informative)) == rule


# ------------------------------------------------------------------------------------------------------ the exchanges


def first_seed(task: SynthesizedTask, template: int) -> int:
    return next(seed for seed in SEEDS if compose(task, seed).template == template)


def test_a_verbatim_forward_cot_pattern_writes_reasoning_then_answer():
    # COT_PATTERNS[0]: the question as asked -> "{reasoning}\nSo the answer is: {answer}"
    seed = first_seed(COT_TASK, 0)
    assert compose(COT_TASK, seed) == Composition(
        user=QUESTION, response=f"{INFORMATIVE}\nSo the answer is: {PRECISE}", rule="cot_template", kind="forward",
        template=0, seed=seed)


def test_an_answer_given_cot_pattern_asks_for_the_question():
    # "Reasoning: {reasoning}\nAnswer: {answer}" -> "Question: {question}"
    template = next(index for index, pattern in enumerate(COT_PATTERNS)
                    if pattern.user == "Reasoning: {reasoning}\nAnswer: {answer}")
    composition = compose(COT_TASK, first_seed(COT_TASK, template))
    assert composition.kind == "question_from_rationale_answer"
    assert composition.user == f"Reasoning: {INFORMATIVE}\nAnswer: {PRECISE}"
    assert composition.response == f"Question: {QUESTION}"


def test_the_exceptions_use_the_informative_answer_alone_or_followed_by_the_precise_one():
    # BASIC_PATTERNS[0]: the question as asked -> the answer as it is.
    seed = first_seed(BASIC_TASK, 0)
    assert compose(BASIC_TASK, seed) == Composition(
        user=QUESTION, response=CONCLUDING, rule="informative_only", kind="forward", template=0, seed=seed)
    joined = SynthesizedTask(QUESTION, "So right.", INFORMATIVE)
    composition = compose(joined, first_seed(joined, 0))
    assert (composition.rule, composition.response) == ("informative_then_precise", f"{INFORMATIVE} So right.")


def test_every_kind_puts_each_text_where_its_name_says():
    """Hand-derived from the kind names: what the user turn gives and what the response writes."""
    places = {  # kind -> (texts in the user turn, texts in the response)
        "forward": ({QUESTION}, {INFORMATIVE, PRECISE}),
        "rationale_only": ({QUESTION}, {INFORMATIVE}),
        "rationale_from_answer": ({QUESTION, PRECISE}, {INFORMATIVE}),
        "question_answer_from_rationale": ({INFORMATIVE}, {QUESTION, PRECISE}),
        "question_from_rationale_answer": ({INFORMATIVE, PRECISE}, {QUESTION}),
        "question_rationale_from_answer": ({PRECISE}, {QUESTION, INFORMATIVE}),
    }
    texts = {QUESTION, INFORMATIVE, PRECISE}
    for index in range(len(COT_PATTERNS)):
        composition = compose(COT_TASK, first_seed(COT_TASK, index))
        given, written = places[composition.kind]
        assert {text for text in texts if text in composition.user} == given, composition
        assert {text for text in texts if text in composition.response} == written, composition
    basic_places = {"forward": ({QUESTION}, {CONCLUDING}), "question_from_answer": ({CONCLUDING}, {QUESTION}),
                    "question_from_image": (set(), {QUESTION})}
    for index in range(len(BASIC_PATTERNS)):
        composition = compose(BASIC_TASK, first_seed(BASIC_TASK, index))
        given, written = basic_places[composition.kind]
        assert {text for text in (QUESTION, CONCLUDING) if text in composition.user} == given, composition
        assert {text for text in (QUESTION, CONCLUDING) if text in composition.response} == written, composition


def test_texts_are_inserted_as_they_are():
    task = SynthesizedTask("What is {x}?", " Right. ", "It is {y} here.\n")
    composition = compose(task, first_seed(task, 0))
    assert composition.user == "What is {x}?"
    assert composition.response == "It is {y} here.\n\nSo the answer is:  Right. "


def test_the_draw_follows_the_seed():
    assert [compose(COT_TASK, seed) for seed in SEEDS[:50]] == [compose(COT_TASK, seed) for seed in SEEDS[:50]]
    assert len({compose(COT_TASK, seed).template for seed in SEEDS}) == len(COT_PATTERNS)


# ---------------------------------------------------------------------------------------------------- the proportions


def test_pattern_weights_are_the_releases_counts():
    for patterns, release, verbatim in ((COT_PATTERNS, RELEASE_COT, RELEASE_VERBATIM_FORWARD["cot"]),
                                        (BASIC_PATTERNS, RELEASE_BASIC, RELEASE_VERBATIM_FORWARD["basic"])):
        weights = Counter()
        for pattern in patterns:
            weights[pattern.kind] += pattern.weight
        assert dict(weights) == release
        assert sum(p.weight for p in patterns if p.kind == "forward" and p.user == "{question}") == verbatim


def within(count: int, draws: int, probability: float) -> bool:
    """The observed share is within 4 standard errors of the expected one. For a correct weighting this fails with
    probability about 6e-5 per share (and the seeds are fixed, so the test is deterministic); a weighting off by a
    few release patterns in a 10% kind (e.g. uniform over our templates) is off by more than that at 6000 draws."""
    return abs(count / draws - probability) <= 4 * math.sqrt(probability * (1 - probability) / draws)


@pytest.mark.parametrize(("task", "release", "verbatim"), [
    (COT_TASK, RELEASE_COT, RELEASE_VERBATIM_FORWARD["cot"]),
    (BASIC_TASK, RELEASE_BASIC, RELEASE_VERBATIM_FORWARD["basic"]),
])
def test_kinds_are_drawn_in_the_releases_proportions(task, release, verbatim):
    compositions = [compose(task, seed) for seed in SEEDS]
    kinds = Counter(composition.kind for composition in compositions)
    total = sum(release.values())
    assert set(kinds) == set(release)
    for kind, count in release.items():
        assert within(kinds[kind], DRAWS, count / total), (kind, kinds[kind])
    forward = [composition for composition in compositions if composition.kind == "forward"]
    asked_as_is = sum(composition.user == QUESTION for composition in forward)
    assert within(asked_as_is, len(forward), verbatim / release["forward"]), asked_as_is
