"""The rule-based baseline: tasks templated from the caption alone, for the paper's comparison with manual rules.

Each caption yields one task about what the image shows. The question is one of a few templates; the precise answer is
the caption's key phrase (the subject of its first sentence, with lead-ins such as "This image shows" and a leading
article removed, cut before the first clause); the informative answer is the caption's first sentence. The template is
drawn with ``random.Random(seed)``, so a task depends only on the caption and the seed.
"""

from __future__ import annotations

import random
import re

from engine.synthesis.parsing import ParseResult, SynthesizedTask

EMPTY_CAPTION = "empty_caption"

QUESTION_TEMPLATES = (
    "What does this image show?",
    "What is depicted in the image?",
    "What is the main subject of this picture?",
    "Identify what can be seen in the image.",
    "What is shown here? Answer briefly.",
)

MAX_KEY_PHRASE_WORDS = 8

# Openings that name the medium rather than the content ("This image shows a ...", "An aerial photograph of ..."):
# removed to reach the subject.
_LEAD_IN = re.compile(
    r"^(?:(?:this|the|an?)\s+)?(?:[\w-]+\s+){0,2}"
    r"(?:image|picture|photo(?:graph)?|figure|scan|view|illustration|micrograph)s?"
    r"\s+(?:of|shows?|showing|depicts?|depicting|displays?|displaying|illustrates?|presents?|contains?)\s+",
    re.I,
)
# Where the subject ends and the rest of the sentence (a clause, a participle, a place) begins.
_CLAUSE_BREAK = re.compile(
    r"[,;:()]|\s(?:with|which|that|who|where|showing|shows|show|is|are|was|were|has|have|in|on|at|from)\s", re.I
)
_LEADING_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.I)
# "Dish: Strawberry Waffles" style captions: the label's value is the key phrase.
_LABELLED_FIRST_LINE = re.compile(r"^\s*[A-Za-z][\w ]{0,30}:\s*(\S.*)$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def first_sentence(caption: str) -> str:
    """The caption's first non-empty sentence or line."""
    return next((part.strip() for part in _SENTENCE_END.split(caption.strip()) if part.strip()), "")


def key_phrase(caption: str) -> str:
    """The caption's subject, short enough to be a precise answer."""
    sentence = first_sentence(caption)
    labelled = _LABELLED_FIRST_LINE.match(sentence)
    phrase = labelled.group(1) if labelled else _LEAD_IN.sub("", sentence)
    phrase = _LEADING_ARTICLE.sub("", _CLAUSE_BREAK.split(phrase, maxsplit=1)[0])
    words = phrase.rstrip(".!? ").split()[:MAX_KEY_PHRASE_WORDS]
    return " ".join(words) or sentence


def rule_based_task(caption: str, seed: int) -> ParseResult:
    """One templated task for ``caption``; none, with a reason, for an empty caption."""
    informative = first_sentence(caption)
    if not informative:
        return ParseResult(tasks=(), reason=EMPTY_CAPTION)
    question = random.Random(seed).choice(QUESTION_TEMPLATES)
    task = SynthesizedTask(question=question, precise=key_phrase(caption), informative=informative)
    return ParseResult(tasks=(task,), reason=None)
