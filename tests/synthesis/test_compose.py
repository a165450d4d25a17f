from __future__ import annotations

import random

import pytest

from engine.synthesis.compose import COT_TEMPLATES, Composition, compose, concludes, last_sentence
from engine.synthesis.parsing import SynthesizedTask

INFORMATIVE = "The right costophrenic angle is blunted. A meniscus-shaped opacity fills the right lung base."
TASK = SynthesizedTask("Which side shows the effusion?", "Right side.", INFORMATIVE)


def _seed_for_template(index: int) -> int:
    return next(seed for seed in range(1000) if random.Random(seed).randrange(len(COT_TEMPLATES)) == index)


EXPECTED_RESPONSES = (
    f"{INFORMATIVE} Therefore, the answer is Right side.",
    f"{INFORMATIVE}\n\nAnswer: Right side",
    f"{INFORMATIVE} So the final answer is: Right side.",
    f"Reasoning: {INFORMATIVE}\nConclusion: Right side",
    f"{INFORMATIVE} In short, Right side.",
)


@pytest.mark.parametrize("index", range(len(COT_TEMPLATES)))
def test_every_template_joins_reasoning_and_answer(index):
    seed = _seed_for_template(index)
    assert compose(TASK, seed) == Composition(
        response=EXPECTED_RESPONSES[index], rule="cot_template", template=index, seed=seed
    )


def test_template_choice_is_seeded_and_reproducible():
    draws = [compose(TASK, seed).template for seed in range(50)]
    assert draws == [compose(TASK, seed).template for seed in range(50)]
    assert set(draws) == set(range(len(COT_TEMPLATES)))


def test_informative_answer_that_already_concludes_is_used_alone():
    task = SynthesizedTask(
        "What dish is this?",
        "Pad thai",
        "The noodles are stir-fried with shrimp and peanuts. Therefore, this is pad thai.",
    )
    assert compose(task, seed=3) == Composition(task.informative, rule="informative_only", template=None, seed=3)


def test_a_conclusion_before_the_last_sentence_does_not_count():
    task = SynthesizedTask("What is shown?", "Forest", "The answer lies in the canopy. Trees cover the scene.")
    assert compose(task, seed=0).rule == "cot_template"


def test_precise_answer_that_concludes_is_appended_to_the_informative_answer():
    task = SynthesizedTask(
        "What could this be?", "It could be a cyst.", "A round, fluid-filled lesion sits in the liver."
    )
    result = compose(task, seed=5)
    assert result == Composition(
        "A round, fluid-filled lesion sits in the liver. It could be a cyst.",
        rule="informative_then_precise",
        template=None,
        seed=5,
    )


def test_informative_exception_wins_over_precise_exception():
    task = SynthesizedTask("Q?", "So, forest.", "Trees everywhere, so the land cover is forest.")
    assert compose(task, seed=1).rule == "informative_only"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is B", True),
        ("Thus it is benign", True),
        ("THEREFORE, benign", True),
        ("The final diagnosis", True),
        ("As a result the field floods", True),
        ("It could be a cyst", True),
        ("It could  be a cyst", True),
        ("It is also red", False),
        ("An ISO standard", False),
        ("The resultant image", False),
        ("Answering the call", False),
        ("It could have been", False),
    ],
)
def test_conclusion_markers_match_whole_words_in_any_case(text, expected):
    assert concludes(text) is expected


def test_last_sentence_splits_on_sentence_ends_and_line_breaks():
    assert last_sentence("One. Two! Three?") == "Three?"
    assert last_sentence("Steps:\nMix the batter\nBake it") == "Bake it"
    assert last_sentence("Single sentence without period") == "Single sentence without period"
