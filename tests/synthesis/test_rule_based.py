from __future__ import annotations

import pytest

from engine.synthesis.rule_based import (
    EMPTY_CAPTION,
    QUESTION_TEMPLATES,
    first_sentence,
    key_phrase,
    rule_based_task,
)


@pytest.mark.parametrize(
    ("caption", "phrase"),
    [
        ("This image shows a plate of spaghetti carbonara with crispy pancetta.", "plate of spaghetti carbonara"),
        ("Chest X-ray showing consolidation in the left lower lobe.", "Chest X-ray"),
        ("An MRI scan of the brain, axial view. No mass is seen.", "brain"),
        ("Scanning electron micrograph of pollen grains.", "pollen grains"),
        ("Aerial photograph of a harbor with several cargo ships.", "harbor"),
        ("Dish: Strawberry Waffles\n\nSteps to prepare: preheat the iron.", "Strawberry Waffles"),
        ("Histopathology slide (H&E stain) of a lymph node.", "Histopathology slide"),
        ("A dense residential area in which houses line narrow streets.", "dense residential area"),
    ],
)
def test_key_phrase_is_the_subject_of_the_first_sentence(caption, phrase):
    assert key_phrase(caption) == phrase


def test_key_phrase_is_capped_in_length():
    caption = "Seventeen small round brown ceramic bowls filled to the brim arranged neatly in rows."
    assert len(key_phrase(caption).split()) == 8


def test_first_sentence_stops_at_a_sentence_end_or_a_line_break():
    assert first_sentence("A bowl of ramen. Topped with egg.") == "A bowl of ramen."
    assert first_sentence("\n  Dish: Pad thai\nIngredients: noodles") == "Dish: Pad thai"


def test_task_uses_the_key_phrase_and_the_first_sentence():
    caption = "Chest X-ray showing consolidation in the left lower lobe. The heart size is normal."
    (task,) = rule_based_task(caption, seed=0).tasks
    assert task.question in QUESTION_TEMPLATES
    assert task.precise == "Chest X-ray"
    assert task.informative == "Chest X-ray showing consolidation in the left lower lobe."


def test_same_seed_same_task_and_seeds_cover_the_templates():
    caption = "A satellite image of farmland with circular irrigation fields."
    assert rule_based_task(caption, seed=7) == rule_based_task(caption, seed=7)
    questions = {rule_based_task(caption, seed=seed).tasks[0].question for seed in range(200)}
    assert questions == set(QUESTION_TEMPLATES)


@pytest.mark.parametrize("caption", ["", "   ", "\n\n"])
def test_empty_caption_gives_no_task(caption):
    result = rule_based_task(caption, seed=1)
    assert result.tasks == ()
    assert result.reason == EMPTY_CAPTION
