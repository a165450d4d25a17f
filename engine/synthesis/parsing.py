"""Read tasks back from the synthesizer's raw output.

The output continues an open user turn (see ``prompts``), with special tokens kept: a question, the end-of-turn token,
an assistant header, an answer, the end-of-turn token, a user header, and so on. The family's turn delimiters split it
into turns; complete user turns followed by complete assistant turns form question-answer pairs; a user turn carries a
hint ("Answer with a precise response." / "Answer with an informative response.") before (or, tolerated, after) its
question.

The rule (AdaMLLM): the first question to have appeared under both hints becomes the one task (question, precise
answer, informative answer). "First" is in order of completion: the task is fixed at the earliest turn where some
question has been answered under both hints. Questions are matched after collapsing whitespace and case. When a
question is repeated under the same hint, its first answer counts.

Tolerated: a prompt echoed before the output, any number of QA turns, hints in either order or on the question's other
side, a missing hint, a truncated last turn (a turn without its end token is dropped), stray or unknown special tokens
(removed from the text), whitespace differences around hints and turns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from engine.models.families import ModelFamily, get_family
from engine.synthesis.prompts import INFORMATIVE_HINT, PRECISE_HINT

Hint = Literal["precise", "informative"]

EMPTY_OUTPUT = "empty_output"
NO_COMPLETE_QA_TURN = "no_complete_qa_turn"
NO_QUESTION_UNDER_BOTH_HINTS = "no_question_under_both_hints"

# Any `<|...|>` token of the Llama-3 and ChatML vocabularies, known or not; stripped from the text of a turn.
_SPECIAL_TOKEN = re.compile(r"<\|[^|<>\s]{1,64}\|>")


def _hint_pattern(hint: str) -> str:
    """A hint as a regex tolerant to case, spacing and a missing or swapped final period."""
    words = hint.rstrip(".").split()
    return r"\s+".join(map(re.escape, words)) + r"\s*[.:]?"


_HINTS: dict[Hint, str] = {"precise": _hint_pattern(PRECISE_HINT), "informative": _hint_pattern(INFORMATIVE_HINT)}
_HINT_BEFORE = {hint: re.compile(rf"^\s*{pattern}\s*(.*?)\s*$", re.I | re.S) for hint, pattern in _HINTS.items()}
_HINT_AFTER = {hint: re.compile(rf"^\s*(.*?)\s*{pattern}\s*$", re.I | re.S) for hint, pattern in _HINTS.items()}


@dataclass(frozen=True)
class SynthesizedTask:
    """One instruction with its two answers: a short precise one and an informative one that explains."""

    question: str
    precise: str
    informative: str


@dataclass(frozen=True)
class ParseResult:
    """What one output yields: zero or one task, and why none when empty; ``qa_pairs`` counts complete pairs seen."""

    tasks: tuple[SynthesizedTask, ...]
    reason: str | None
    qa_pairs: int = 0


@dataclass(frozen=True)
class Turn:
    """One turn of the output: its role, its text without special tokens, and whether its end token arrived."""

    role: str
    text: str
    complete: bool


def split_turns(output: str, family: ModelFamily | str = "llava-llama3") -> list[Turn]:
    """Split raw output into turns; text before the first header belongs to the user turn the prompt opened."""
    family = get_family(family)
    header = re.compile(
        rf"{re.escape(family.role_open)}\s*([a-z_]+)\s*{re.escape(family.role_close.strip())}", re.I
    )
    pieces = header.split(output)
    roles = ["user", *pieces[1::2]]
    return [_turn(role.lower(), body, family) for role, body in zip(roles, pieces[0::2])]


def _turn(role: str, body: str, family: ModelFamily) -> Turn:
    """A turn's clean text, cut at its end token; without one (truncated output) it is incomplete."""
    end = re.search("|".join(map(re.escape, family.stop)), body)
    text = body[: end.start()] if end else body
    return Turn(role=role, text=_SPECIAL_TOKEN.sub("", text).strip(), complete=end is not None)


def qa_pairs(turns: list[Turn]) -> list[tuple[str, str]]:
    """(user text, assistant text) for each complete, non-empty user turn answered by a complete assistant turn."""
    return [
        (question.text, answer.text)
        for question, answer in zip(turns, turns[1:])
        if question.role == "user"
        and answer.role == "assistant"
        and question.complete
        and answer.complete
        and question.text
        and answer.text
    ]


def split_hint(user_text: str) -> tuple[Hint, str] | None:
    """(hint, question) when the text carries a hint and a non-empty question, else None."""
    for hint in _HINTS:
        for pattern in (_HINT_BEFORE[hint], _HINT_AFTER[hint]):
            match = pattern.match(user_text)
            if match and match.group(1):
                return hint, match.group(1)
    return None


def _question_key(question: str) -> str:
    return " ".join(question.split()).casefold()


def parse_synthesizer_output(output: str, family: ModelFamily | str = "llava-llama3") -> ParseResult:
    """The task (if any) in one synthesizer output, by the first-question-under-both-hints rule."""
    if not _SPECIAL_TOKEN.sub("", output).strip():
        return ParseResult(tasks=(), reason=EMPTY_OUTPUT)
    pairs = qa_pairs(split_turns(output, family))
    if not pairs:
        return ParseResult(tasks=(), reason=NO_COMPLETE_QA_TURN)
    answers: dict[str, dict[Hint, str]] = {}
    questions: dict[str, str] = {}
    for user_text, answer in pairs:
        hinted = split_hint(user_text)
        if hinted is None:
            continue
        hint, question = hinted
        key = _question_key(question)
        questions.setdefault(key, question)
        answers.setdefault(key, {}).setdefault(hint, answer)
        if len(answers[key]) == len(_HINTS):
            task = SynthesizedTask(questions[key], answers[key]["precise"], answers[key]["informative"])
            return ParseResult(tasks=(task,), reason=None, qa_pairs=len(pairs))
    return ParseResult(tasks=(), reason=NO_QUESTION_UNDER_BOTH_HINTS, qa_pairs=len(pairs))
