"""The synthesizer-output parsers: the release's (the default) on the audit's probes, with expectations derived by
hand from the release's rules, and the lenient one (synthesis.lenient_parse)."""

from __future__ import annotations

from functools import partial

import pytest

from engine.synthesis.parsing import (
    EMPTY_OUTPUT,
    NO_COMPLETE_QA_TURN,
    NO_QUESTION_UNDER_BOTH_HINTS,
    ParseResult,
    SynthesizedTask,
    Turn,
    parse_release,
    parse_synthesizer_output,
    qa_pairs,
    release_qa_pairs,
    split_hint,
    split_turns,
)

lenient = partial(parse_synthesizer_output, lenient=True)

USER = "<|start_header_id|>user<|end_header_id|>\n\n"
ASSISTANT = "<|start_header_id|>assistant<|end_header_id|>\n\n"
EOT = "<|eot_id|>"

# What the released synthesizer writes after the prompt's open user turn (special tokens kept).
TWO_HINTS_PRECISE_FIRST = (
    "Answer with a precise response.\nWhat is the color of the lesion?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHypodense<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "Answer with an informative response.\nWhat is the color of the lesion?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    "The lesion appears darker than the surrounding liver parenchyma, which means it is hypodense on this CT image."
    "<|eot_id|>"
)

LESION = SynthesizedTask(
    question="What is the color of the lesion?",
    precise="Hypodense",
    informative="The lesion appears darker than the surrounding liver parenchyma, which means it is hypodense on this "
    "CT image.",
)


# ---------------------------------------------------------------------------------------------- the release's parser

P, I = "Answer with a precise response.\n", "Answer with an informative response.\n"
ORGAN = "What organ is shown?"
LIVER_INFO = "The large wedge-shaped organ under the right ribs is the liver."


def turn(question: str, answer: str) -> str:
    """One question and its answer as the synthesizer writes them after an open user header."""
    return f"{question}{EOT}{ASSISTANT}{answer}{EOT}"


def release(*turns: str, tail: str = "") -> ParseResult:
    return parse_synthesizer_output(USER.join(turns) + tail)


def test_release_reads_a_well_formed_output():
    result = release(turn(P + ORGAN, "Liver"), turn(I + ORGAN, LIVER_INFO))
    assert result == ParseResult(tasks=(SynthesizedTask(ORGAN, "Liver", LIVER_INFO),), reason=None, qa_pairs=2)
    assert release(turn(I + ORGAN, LIVER_INFO), turn(P + ORGAN, "Liver")).tasks == result.tasks


def test_release_a_repeated_question_keeps_its_last_answer():
    result = release(turn(P + ORGAN, "Liver"), turn(P + ORGAN, "Spleen"), turn(I + ORGAN, LIVER_INFO))
    assert result.tasks == (SynthesizedTask(ORGAN, "Spleen", LIVER_INFO),)


def test_release_the_first_question_completed_under_both_hints_wins():
    result = release(turn(P + "How many?", "Two"), turn(P + ORGAN, "Liver"), turn(I + ORGAN, LIVER_INFO),
                     turn(I + "How many?", "There are two."))
    assert result.tasks == (SynthesizedTask(ORGAN, "Liver", LIVER_INFO),) and result.qa_pairs == 4


@pytest.mark.parametrize("turns", [
    # questions differing in case only are different questions
    (turn(P + ORGAN, "Liver"), turn(I + ORGAN.lower(), LIVER_INFO)),
    # a hint in lower case is no hint
    (turn(P.lower() + ORGAN, "Liver"), turn(I + ORGAN, LIVER_INFO)),
    # a hint after the question is no hint
    (turn(f"{ORGAN}\n{P.strip()}", "Liver"), turn(f"{ORGAN}\n{I.strip()}", LIVER_INFO)),
    # a blank line after the hint makes the question "\nWhat organ is shown?", not the informative one's
    (turn(P + "\n" + ORGAN, "Liver"), turn(I + ORGAN, LIVER_INFO)),
    # a hint without its line break is no hint
    (turn(P.strip() + " " + ORGAN, "Liver"), turn(I + ORGAN, LIVER_INFO)),
])
def test_release_needs_exact_hints_and_identical_questions(turns):
    assert release(*turns).reason == NO_QUESTION_UNDER_BOTH_HINTS


def test_release_drops_the_last_piece_unless_the_output_ends_with_the_end_of_turn_token():
    assert release(turn(P + ORGAN, "Liver"), turn(I + ORGAN, LIVER_INFO), tail="\n").tasks == ()
    assert release(turn(P + ORGAN, "Liver"), turn(I + ORGAN, LIVER_INFO), tail="<|end_of_text|>").tasks == ()
    cut = release(turn(P + ORGAN, "Liver"), f"{I}{ORGAN}{EOT}{ASSISTANT}The large wedge")
    assert cut.reason == NO_QUESTION_UNDER_BOTH_HINTS and cut.qa_pairs == 1
    # An open user header at the end: the empty last piece is dropped, the task before it stands.
    opened = release(turn(P + ORGAN, "Liver"), turn(I + ORGAN, LIVER_INFO), "")
    assert opened.tasks == (SynthesizedTask(ORGAN, "Liver", LIVER_INFO),)


def test_release_keeps_special_tokens_inside_answers():
    result = release(turn(P + ORGAN, "Liver<|reserved_special_token_4|>"), turn(I + ORGAN, LIVER_INFO))
    assert result.tasks[0].precise == "Liver<|reserved_special_token_4|>"


def test_release_skips_a_question_answered_twice():
    twice = f"{P}{ORGAN}{EOT}{ASSISTANT}Liver{EOT}{ASSISTANT}Spleen{EOT}"
    result = release(twice, turn(I + ORGAN, LIVER_INFO))
    assert result.reason == NO_QUESTION_UNDER_BOTH_HINTS and result.qa_pairs == 1


def test_release_cuts_the_answers_last_end_token_length_unchecked():
    # A newline between the end token and the next header: the answer loses its last 10 characters, as released.
    pairs = release_qa_pairs(f"{P}{ORGAN}{EOT}{ASSISTANT}Liver{EOT}\n{USER}" + turn(I + ORGAN, LIVER_INFO))
    assert pairs == [(P.strip() + "\n" + ORGAN, "Liver<"), (I.strip() + "\n" + ORGAN, LIVER_INFO)]


@pytest.mark.parametrize(("output", "reason"), [
    ("", EMPTY_OUTPUT), (" \n", EMPTY_OUTPUT), ("<|eot_id|>", NO_COMPLETE_QA_TURN),
    (f"{P}{ORGAN}", NO_COMPLETE_QA_TURN), (turn(ORGAN, "Liver"), NO_QUESTION_UNDER_BOTH_HINTS),
])
def test_release_reasons_for_no_task(output, reason):
    assert parse_release(output).reason == reason


def test_release_parser_on_chatml_delimiters():
    chatml = ("Answer with a precise response.\nWhat dominates?<|im_end|>\n<|im_start|>assistant\nForest<|im_end|>\n"
              "<|im_start|>user\nAnswer with an informative response.\nWhat dominates?<|im_end|>\n"
              "<|im_start|>assistant\nA dark green canopy covers the scene.<|im_end|>\n")
    assert parse_release(chatml, "qwen2-vl").tasks == (
        SynthesizedTask("What dominates?", "Forest", "A dark green canopy covers the scene."),)
    assert parse_release(chatml.removesuffix("\n"), "qwen2-vl").tasks == ()  # the end of turn includes its newline


# ----------------------------------------------------------------------------------------------- the lenient parser


def test_precise_then_informative_gives_one_task():
    result = lenient(TWO_HINTS_PRECISE_FIRST)
    assert result.tasks == (LESION,)
    assert result.reason is None
    assert result.qa_pairs == 2


def test_informative_then_precise_gives_the_same_task():
    output = (
        "Answer with an informative response.\nWhat dish is this?<|eot_id|>"
        f"{ASSISTANT}This is a stack of waffles studded with fresh strawberries, dusted with powdered sugar.{EOT}"
        f"{USER}Answer with a precise response.\nWhat dish is this?{EOT}"
        f"{ASSISTANT}Strawberry waffles{EOT}"
    )
    (task,) = lenient(output).tasks
    assert task == SynthesizedTask(
        "What dish is this?",
        "Strawberry waffles",
        "This is a stack of waffles studded with fresh strawberries, dusted with powdered sugar.",
    )


def test_the_first_question_to_complete_both_hints_wins_among_several():
    output = (
        f"Answer with a precise response.\nHow many ingredients are listed?{EOT}{ASSISTANT}Seven{EOT}"
        f"{USER}Answer with a precise response.\nWhat is the main fruit?{EOT}{ASSISTANT}Strawberry{EOT}"
        f"{USER}Answer with an informative response.\nWhat is the main fruit?{EOT}"
        f"{ASSISTANT}Sliced strawberries are folded into the batter and scattered on top.{EOT}"
        f"{USER}Answer with an informative response.\nHow many ingredients are listed?{EOT}"
        f"{ASSISTANT}The recipe lists seven ingredients, from flour to sugar.{EOT}"
    )
    result = lenient(output)
    assert result.tasks == (
        SynthesizedTask(
            "What is the main fruit?",
            "Strawberry",
            "Sliced strawberries are folded into the batter and scattered on top.",
        ),
    )
    assert result.qa_pairs == 4


def test_a_question_under_one_hint_only_gives_no_task():
    output = (
        f"Answer with a precise response.\nWhich lobe holds the lesion?{EOT}{ASSISTANT}Right lobe{EOT}"
        f"{USER}Answer with an informative response.\nWhat could cause this finding?{EOT}"
        f"{ASSISTANT}A hypodense lesion may be a cyst, an abscess or a tumor.{EOT}"
    )
    result = lenient(output)
    assert result.tasks == ()
    assert result.reason == NO_QUESTION_UNDER_BOTH_HINTS
    assert result.qa_pairs == 2


def test_a_turn_without_any_hint_is_skipped():
    output = (
        f"What modality is this?{EOT}{ASSISTANT}CT{EOT}"
        f"{USER}Answer with a precise response.\nWhat modality is this?{EOT}{ASSISTANT}Computed tomography{EOT}"
    )
    result = lenient(output)
    assert result.reason == NO_QUESTION_UNDER_BOTH_HINTS
    assert result.qa_pairs == 2


def test_truncated_last_answer_is_dropped():
    output = (
        f"Answer with a precise response.\nWhat is shown?{EOT}{ASSISTANT}A forest{EOT}"
        f"{USER}Answer with an informative response.\nWhat is shown?{EOT}"
        f"{ASSISTANT}The scene is covered by a dense green canopy of trees, with a narrow ri"
    )
    result = lenient(output)
    assert result.tasks == ()
    assert result.reason == NO_QUESTION_UNDER_BOTH_HINTS
    assert result.qa_pairs == 1


def test_truncation_after_the_task_does_not_matter():
    output = TWO_HINTS_PRECISE_FIRST + f"{USER}Answer with a precise response.\nIs there a second les"
    assert lenient(output).tasks == (LESION,)


def test_truncated_question_without_answer_gives_no_complete_turn():
    result = lenient("Answer with a precise response.\nWhat is the")
    assert result.tasks == ()
    assert result.reason == NO_COMPLETE_QA_TURN


@pytest.mark.parametrize("output", ["", "   \n", "<|eot_id|>", "<|end_of_text|>\n"])
def test_empty_output(output):
    result = lenient(output)
    assert result.tasks == ()
    assert result.reason == EMPTY_OUTPUT


def test_end_of_text_closes_the_last_turn():
    output = TWO_HINTS_PRECISE_FIRST.removesuffix(EOT) + "<|end_of_text|>"
    assert lenient(output).tasks == (LESION,)


def test_extra_and_unknown_special_tokens_are_removed():
    output = (
        "<|reserved_special_token_4|>Answer with a precise response.\nWhat is the color of the lesion?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<|python_tag|>Hypodense<|eot_id|><|end_of_text|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Answer with an informative response.\nWhat is the color of the lesion?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        "The lesion appears darker than the surrounding liver parenchyma, which means it is hypodense on this CT "
        "image.<|eot_id|><|end_of_text|>"
    )
    assert lenient(output).tasks == (LESION,)


def test_whitespace_and_case_differences_around_hints_and_headers():
    output = (
        "  answer with a PRECISE response.   What is the color of the lesion?\n<|eot_id|>\n"
        "<|start_header_id|> assistant <|end_header_id|>\n\n\n  Hypodense \n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Answer  with an informative response\n\nWhat is the  color of the lesion?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        "The lesion appears darker than the surrounding liver parenchyma, which means it is hypodense on this CT "
        "image.<|eot_id|>"
    )
    (task,) = lenient(output).tasks
    assert task == LESION


def test_hint_written_after_the_question_is_understood():
    output = (
        f"Which side is the effusion on?\nAnswer with a precise response.{EOT}{ASSISTANT}Right{EOT}"
        f"{USER}Which side is the effusion on?\nAnswer with an informative response.{EOT}"
        f"{ASSISTANT}The right costophrenic angle is blunted, so the effusion is on the right.{EOT}"
    )
    (task,) = lenient(output).tasks
    assert (task.question, task.precise) == ("Which side is the effusion on?", "Right")


def test_a_repeated_question_keeps_its_first_answer_under_a_hint():
    output = (
        f"Answer with a precise response.\nWhat is shown?{EOT}{ASSISTANT}Forest{EOT}"
        f"{USER}Answer with a precise response.\nWhat is shown?{EOT}{ASSISTANT}Woodland{EOT}"
        f"{USER}Answer with an informative response.\nWhat is shown?{EOT}{ASSISTANT}Dense trees cover the scene.{EOT}"
    )
    (task,) = lenient(output).tasks
    assert task.precise == "Forest"


def test_output_that_echoes_the_prompt_is_parsed_from_its_qa_turns():
    prompt = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        f"{USER}<|reserved_special_token_4|>\nDescribe the image.{EOT}{ASSISTANT}An abdominal CT.{EOT}{USER}"
    )
    assert lenient(prompt + TWO_HINTS_PRECISE_FIRST).tasks == (LESION,)


def test_empty_answer_turns_do_not_count():
    output = (
        f"Answer with a precise response.\nWhat is shown?{EOT}{ASSISTANT}{EOT}"
        f"{USER}Answer with an informative response.\nWhat is shown?{EOT}{ASSISTANT}A forest.{EOT}"
    )
    result = lenient(output)
    assert result.reason == NO_QUESTION_UNDER_BOTH_HINTS
    assert result.qa_pairs == 1


def test_qwen2_vl_output_is_parsed_with_chatml_delimiters():
    output = (
        "Answer with an informative response.\nWhat type of land cover dominates?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Most of the image is a continuous dark green canopy, which indicates forest.<|im_end|>\n"
        "<|im_start|>user\nAnswer with a precise response.\nWhat type of land cover dominates?<|im_end|>\n"
        "<|im_start|>assistant\nForest<|im_end|>\n"
        "<|im_start|>user\nAnswer with a precise"
    )
    result = lenient(output, "qwen2-vl")
    assert result.tasks == (
        SynthesizedTask(
            "What type of land cover dominates?",
            "Forest",
            "Most of the image is a continuous dark green canopy, which indicates forest.",
        ),
    )


def test_llama3_delimiters_do_not_split_chatml_output():
    output = "Answer with a precise response.\nQ?<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    assert lenient(output, "llava-llama3").reason == NO_COMPLETE_QA_TURN


def test_split_turns_marks_roles_and_completeness():
    turns = split_turns(f"Q1{EOT}{ASSISTANT}A1{EOT}{USER}Q2")
    assert turns == [
        Turn("user", "Q1", complete=True),
        Turn("assistant", "A1", complete=True),
        Turn("user", "Q2", complete=False),
    ]


def test_qa_pairs_need_a_user_turn_followed_by_an_assistant_turn():
    turns = [
        Turn("system", "S", True),
        Turn("assistant", "orphan", True),
        Turn("user", "Q", True),
        Turn("assistant", "A", True),
        Turn("user", "Q2", True),
        Turn("user", "Q3", True),
    ]
    assert qa_pairs(turns) == [("Q", "A")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer with a precise response.\nWhat is it?", ("precise", "What is it?")),
        ("Answer with an informative response.\nWhat is it?", ("informative", "What is it?")),
        ("What is it?\nAnswer with a precise response.", ("precise", "What is it?")),
        ("ANSWER WITH AN INFORMATIVE RESPONSE: What is it?", ("informative", "What is it?")),
        ("Answer with a precise response.", None),
        ("What is it?", None),
    ],
)
def test_split_hint(text, expected):
    assert split_hint(text) == expected
