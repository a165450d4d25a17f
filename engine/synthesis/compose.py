"""Turn a kept task into its training exchange, as AdaMLLM's release does: a rule, then a drawn instruction template.

The rule (checked in this order, on the release's exact tests):
1. ``informative_only``: the informative answer's last sentence already concludes. The last sentence is the last
   piece of ``informative.strip().lower().split('. ')``, and it concludes when one of ``CONCLUSION_MARKERS`` is a
   SUBSTRING of it. Each marker ends with a space, so "so " also matches inside "also " and "Therefore," does not
   match: that is the release's test, kept as is. The informative answer is the answer.
2. ``informative_then_precise``: a marker is a substring of the lower-cased precise answer (anywhere in it). The answer
   is the informative answer, a space, the precise answer.
3. ``cot_template``: otherwise the informative answer is the reasoning and the precise answer the answer.

Rules 1 and 2 draw from ``templates.BASIC_PATTERNS`` (fields question, answer), rule 3 from ``templates.COT_PATTERNS``
(question, reasoning, answer). The drawn pattern writes both turns, so the question itself may be rewritten, and a
share of the exchanges are not forward (the user gives the answers, the assistant writes the question, ...). The draw
uses ``random.Random(seed)`` with the row's recorded seed, so it can be replayed. The texts go in as parsed, untouched.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal

from engine.synthesis.parsing import SynthesizedTask
from engine.synthesis.templates import BASIC_PATTERNS, COT_PATTERNS, Pattern

Rule = Literal["cot_template", "informative_only", "informative_then_precise"]

CONCLUSION_MARKERS = ("could be ", "so ", "thus ", "therefore ", "final ", "answer ", "result ")

_COT_WEIGHTS = list(accumulate(pattern.weight for pattern in COT_PATTERNS))
_BASIC_WEIGHTS = list(accumulate(pattern.weight for pattern in BASIC_PATTERNS))


@dataclass(frozen=True)
class Composition:
    """The exchange (user turn, response), the rule and the pattern that made it (index into the rule's list), its
    kind, and the seed of the draw."""

    user: str
    response: str
    rule: Rule
    kind: str
    template: int
    seed: int


def concludes(lowered: str) -> bool:
    """The release's test: a marker (with its trailing space) is a substring of the already lower-cased text."""
    return any(marker in lowered for marker in CONCLUSION_MARKERS)


def last_sentence(informative: str) -> str:
    """The release's last sentence: the last piece after splitting the stripped, lower-cased text on '. '."""
    return informative.strip().lower().split(". ")[-1]


def conclusion_rule(task: SynthesizedTask) -> Rule:
    if concludes(last_sentence(task.informative)):
        return "informative_only"
    if concludes(task.precise.lower()):
        return "informative_then_precise"
    return "cot_template"


def _fields(task: SynthesizedTask, rule: Rule) -> dict[str, str]:
    if rule == "cot_template":
        return {"question": task.question, "reasoning": task.informative, "answer": task.precise}
    answer = task.informative if rule == "informative_only" else f"{task.informative} {task.precise}"
    return {"question": task.question, "answer": answer}


def compose(task: SynthesizedTask, seed: int) -> Composition:
    """The training exchange for ``task``: the rule decides the fields and the pattern list, the seed the pattern."""
    rule = conclusion_rule(task)
    patterns, weights = (COT_PATTERNS, _COT_WEIGHTS) if rule == "cot_template" else (BASIC_PATTERNS, _BASIC_WEIGHTS)
    index = random.Random(seed).choices(range(len(patterns)), cum_weights=weights)[0]
    pattern: Pattern = patterns[index]
    fields = _fields(task, rule)
    # str.format reads the braces of the template only, so braces in the task's texts stay as they are.
    return Composition(user=pattern.user.format(**fields), response=pattern.assistant.format(**fields), rule=rule,
                       kind=pattern.kind, template=index, seed=seed)
