"""Read tasks back from the synthesizer's raw output.

The output continues an open user turn (see ``prompts``), with special tokens kept: a question, the end-of-turn token,
an assistant header, an answer, the end-of-turn token, a user header, and so on. A user turn carries a hint line
("Answer with a precise response." / "Answer with an informative response.") and a question.

The rule (AdaMLLM): the first question to have appeared under both hints becomes the one task (question, precise
answer, informative answer). "First" is in order of completion: the task is fixed at the earliest turn where some
question has been answered under both hints.

Two readers of the same rule:
- ``parse_release`` (the default) is the release's parser on the family's delimiters: the output is split on the exact
  user header; its last piece is dropped unless the output ends with the end-of-turn token; a piece counts only when
  it splits into exactly two on end-of-turn + assistant header, its answer loses its last len(end-of-turn) characters
  (the end token, unchecked) and both sides are stripped and non-empty; a question counts only when it starts with
  the exact hint line (hint + newline); questions match only when identical, and a question repeated under one hint
  keeps its LAST answer.
- ``parse_lenient`` (``synthesis.lenient_parse``): tolerates a prompt echoed before the output, hints in any case or
  spacing, on the question's other side or with a colon, questions differing in case or spacing (matched as one), a
  truncated last turn (a turn without its end token is dropped, the complete ones count), stray or unknown special
  tokens (removed from the text); a repeated question keeps its FIRST answer.
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

# The release's test: the user turn starts with the hint and a newline, exactly.
PRECISE_LINE = f"{PRECISE_HINT}\n"
INFORMATIVE_LINE = f"{INFORMATIVE_HINT}\n"

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


def _task(question: str, precise: str, informative: str, pairs: int) -> ParseResult:
    return ParseResult(tasks=(SynthesizedTask(question, precise, informative),), reason=None, qa_pairs=pairs)


def _no_task(output: str, pairs: int) -> ParseResult:
    if not output.strip():
        return ParseResult(tasks=(), reason=EMPTY_OUTPUT)
    return ParseResult(tasks=(), reason=NO_COMPLETE_QA_TURN if not pairs else NO_QUESTION_UNDER_BOTH_HINTS,
                       qa_pairs=pairs)


# ---- the release's parser


def release_qa_pairs(output: str, family: ModelFamily | str = "llava-llama3") -> list[tuple[str, str]]:
    """(question text, answer) pairs, split exactly as the release splits them (see the module docstring)."""
    family = get_family(family)
    pieces = output.split(family.header("user"))
    if not output.endswith(family.turn_end):
        pieces = pieces[:-1]  # the last turn may be cut short
    answer_start = family.turn_end + family.header("assistant")
    pairs = []
    for piece in pieces:
        parts = piece.split(answer_start)
        if len(parts) != 2:
            continue
        question, answer = parts[0].strip(), parts[1][: -len(family.turn_end)].strip()
        if question and answer:
            pairs.append((question, answer))
    return pairs


def parse_release(output: str, family: ModelFamily | str = "llava-llama3") -> ParseResult:
    """The task (if any) in one synthesizer output, read as the release reads it."""
    pairs = release_qa_pairs(output, family)
    precise: dict[str, str] = {}
    informative: dict[str, str] = {}
    for text, answer in pairs:
        if text.startswith(PRECISE_LINE):
            question = text[len(PRECISE_LINE):]
            if question in informative:
                return _task(question, answer, informative[question], len(pairs))
            precise[question] = answer  # a repeated question: the last answer wins
        elif text.startswith(INFORMATIVE_LINE):
            question = text[len(INFORMATIVE_LINE):]
            if question in precise:
                return _task(question, precise[question], answer, len(pairs))
            informative[question] = answer
    return _no_task(output, len(pairs))


# ---- the lenient parser


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


def parse_lenient(output: str, family: ModelFamily | str = "llava-llama3") -> ParseResult:
    """The task (if any) in one synthesizer output, read with the tolerances of the module docstring."""
    pairs = qa_pairs(split_turns(output, family))
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
            return _task(questions[key], answers[key]["precise"], answers[key]["informative"], len(pairs))
    return _no_task(_SPECIAL_TOKEN.sub("", output), len(pairs))


def parse_synthesizer_output(output: str, family: ModelFamily | str = "llava-llama3",
                             lenient: bool = False) -> ParseResult:
    """The task (if any) in one synthesizer output: the release's reading, or the lenient one."""
    return (parse_lenient if lenient else parse_release)(output, family)
