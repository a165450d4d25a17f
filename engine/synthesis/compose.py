"""Turn a kept task into its training response: a chain of thought that ends in the precise answer.

The informative answer is the reasoning and the precise answer the conclusion, joined by one of ``COT_TEMPLATES``
drawn with ``random.Random(seed)``; the caller records the seed, so the draw can be replayed. Two exceptions
(AdaMLLM), checked in this order:
1. the informative answer's last sentence already concludes: it is the response alone;
2. the precise answer itself reads as a conclusion: the response is the informative answer, a space, the precise one.

A text "concludes" when it contains one of ``CONCLUSION_MARKERS`` ("so", "thus", "therefore", "final", "answer",
"result", "could be") as a whole word, in any case. The paper's list has a trailing space after each marker, which marks
the end of a word; matching whole words keeps that intent, also catches a marker followed by punctuation
("Therefore, ..."), and ignores markers inside other words ("also", "iso", "resultant").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

from engine.synthesis.parsing import SynthesizedTask

Rule = Literal["cot_template", "informative_only", "informative_then_precise"]

COT_TEMPLATES = (
    "{informative} Therefore, the answer is {precise}.",
    "{informative}\n\nAnswer: {precise}",
    "{informative} So the final answer is: {precise}.",
    "Reasoning: {informative}\nConclusion: {precise}",
    "{informative} In short, {precise}.",
)

CONCLUSION_MARKERS = ("so", "thus", "therefore", "final", "answer", "result", "could be")

_CONCLUDES = re.compile(
    r"\b(?:" + "|".join(r"\s+".join(map(re.escape, marker.split())) for marker in CONCLUSION_MARKERS) + r")\b",
    re.I,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class Composition:
    """The response, the rule that made it, and for a template the index drawn from ``COT_TEMPLATES``."""

    response: str
    rule: Rule
    template: int | None
    seed: int


def concludes(text: str) -> bool:
    return _CONCLUDES.search(text) is not None


def last_sentence(text: str) -> str:
    sentences = [part for part in _SENTENCE_END.split(text.strip()) if part.strip()]
    return sentences[-1] if sentences else ""


def compose(task: SynthesizedTask, seed: int) -> Composition:
    """The chain-of-thought response for ``task``."""
    informative, precise = task.informative.strip(), task.precise.strip()
    if concludes(last_sentence(informative)):
        return Composition(response=informative, rule="informative_only", template=None, seed=seed)
    if concludes(precise):
        joined = f"{informative} {precise}"
        return Composition(response=joined, rule="informative_then_precise", template=None, seed=seed)
    index = random.Random(seed).randrange(len(COT_TEMPLATES))
    # The templates end with their own punctuation; a precise answer's final period would double it.
    response = COT_TEMPLATES[index].format(informative=informative, precise=precise.rstrip("."))
    return Composition(response=response, rule="cot_template", template=index, seed=seed)
