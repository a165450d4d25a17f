"""The consistency filter's method: keep a task only when its precise answer follows from its informative answer.

A text-only LLM (the paper: a Llama-3-8B base model, greedy, 2 new tokens) reads a few-shot prompt and labels each task
Yes (consistent), No (inconsistent) or Open (open-ended: a description, an explanation, background knowledge). Only Yes
is kept, and as released only an output that is exactly "yes" once stripped and lower-cased reads as Yes. The prompt
and its examples are this project's own.

``lexical_label`` is a cheap stand-in needing no model, for a pre-filter and the CPU demo. It is a heuristic, not the
paper's judge: it checks word overlap, not meaning, so paraphrases ("CT" vs "computed tomography") read as No and an
informative answer that mentions the precise answer's words in a negation ("not pneumonia") reads as Yes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from engine.synthesis.parsing import SynthesizedTask

Label = Literal["yes", "no", "open"]
LABELS: tuple[Label, ...] = ("yes", "no", "open")

JUDGE_MAX_TOKENS = 2
JUDGE_TEMPERATURE = 0.0

INCONSISTENT = "inconsistent"
OPEN_ENDED = "open_ended"
UNPARSEABLE_JUDGE_OUTPUT = "unparseable_judge_output"

_INSTRUCTIONS = """\
Each item below has a question about an image, an informative answer that reasons about the image, and a precise \
answer that is short. Decide whether the precise answer can be inferred from the informative answer.
Yes: the informative answer supports the precise answer.
No: the informative answer contradicts the precise answer, or does not support it.
Open: the question is open-ended (it asks for a description, an explanation or background knowledge), so no single \
precise answer can be checked."""

# (question, informative, precise, label): medical, food and remote-sensing flavoured, every label represented.
FEW_SHOT_EXAMPLES: tuple[tuple[str, str, str, str], ...] = (
    (
        "What imaging modality was used to acquire this scan?",
        "The picture is a cross-sectional slice in which bone appears bright white and soft tissue in shades of gray, "
        "the typical appearance of computed tomography (CT).",
        "CT",
        "Yes",
    ),
    (
        "Which side of the chest shows the pleural effusion?",
        "The right costophrenic angle is blunted and a meniscus-shaped opacity fills the right lung base, so the fluid "
        "has collected on the right side.",
        "Left",
        "No",
    ),
    (
        "Describe the appearance of the tissue in this slide.",
        "The section shows sheets of cells with enlarged, darkly stained nuclei and scant cytoplasm, surrounded by a "
        "loose fibrous stroma with a few blood vessels.",
        "Hypercellular tissue with atypical nuclei and fibrous stroma",
        "Open",
    ),
    (
        "What dish is shown in the picture?",
        "The plate holds flat rice noodles stir-fried with shrimp, egg and bean sprouts, topped with crushed peanuts "
        "and a lime wedge, the hallmarks of pad thai.",
        "Pad thai",
        "Yes",
    ),
    (
        "Is this dish suitable for a vegetarian?",
        "The waffles are served with several strips of crispy bacon and a pat of maple butter on top.",
        "Yes",
        "No",
    ),
    (
        "Why might this cake have cracked on top?",
        "Cakes often crack when the oven is too hot: the outside sets before the center has finished rising, and the "
        "rising center splits the crust.",
        "The oven was too hot",
        "Open",
    ),
    (
        "What type of land cover dominates this satellite image?",
        "Most of the scene is a continuous dark green canopy of trees, interrupted only by a narrow river, which "
        "indicates dense forest.",
        "Forest",
        "Yes",
    ),
    (
        "How many tennis courts are visible in this aerial image?",
        "Next to the parking lot, two rectangular courts with white boundary lines lie side by side.",
        "3",
        "No",
    ),
)

_ITEM = "Question: {question}\nInformative answer: {informative}\nPrecise answer: {precise}\nLabel:"


def _one_line(text: str) -> str:
    """Collapse whitespace so that an answer's line breaks cannot break the item layout the model imitates."""
    return " ".join(text.split())


def _item(question: str, informative: str, precise: str) -> str:
    return _ITEM.format(question=_one_line(question), informative=_one_line(informative), precise=_one_line(precise))


_FEW_SHOT_BLOCK = "\n\n".join(
    f"{_item(question, informative, precise)} {label}" for question, informative, precise, label in FEW_SHOT_EXAMPLES
)


def consistency_prompt(task: SynthesizedTask) -> str:
    """The few-shot prompt whose continuation (2 tokens, greedy) is the label of ``task``."""
    return f"{_INSTRUCTIONS}\n\n{_FEW_SHOT_BLOCK}\n\n{_item(task.question, task.informative, task.precise)}"


_WORD = re.compile(r"[a-z]+")


def parse_label(text: str, lenient: bool = False) -> Label | None:
    """The judge's label. As released: the output stripped and lower-cased, when it is exactly a label ("Yes." is
    none). ``lenient``: the first label word anywhere in it (any case, punctuation or surrounding words)."""
    if lenient:
        return next((word for word in _WORD.findall(text.lower()) if word in LABELS), None)
    label = text.strip().lower()
    return label if label in LABELS else None


@dataclass(frozen=True)
class Verdict:
    """The judge's label, whether the task is kept, and the reason when it is dropped."""

    label: Label | None
    kept: bool
    reason: str | None


_DROP_REASONS = {"no": INCONSISTENT, "open": OPEN_ENDED, None: UNPARSEABLE_JUDGE_OUTPUT}


def verdict(label: Label | None) -> Verdict:
    """Keep only consistent tasks; a dropped task says why."""
    if label == "yes":
        return Verdict(label=label, kept=True, reason=None)
    return Verdict(label=label, kept=False, reason=_DROP_REASONS[label])


# ---- the lexical judge (heuristic, no model) ----

OPEN_QUESTION_OPENINGS = (
    "describe",
    "explain",
    "why",
    "discuss",
    "elaborate",
    "summarize",
    "summarise",
    "how does",
    "how do",
    "how did",
    "how might",
    "how would",
    "how could",
    "how can",
    "what can you tell",
    "what do you think",
    "in what way",
)
# A precise answer longer than this is a description, not a checkable fact.
MAX_PRECISE_WORDS = 8

_STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or but is are was were be been being it its this that these those "
    "there here as into onto than then which who whom whose what where when how image picture photo shown shows "
    "visible seen can could may might appears appear".split()
)
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())
}
_TOKEN = re.compile(r"[a-z0-9]+")


def _normalize(word: str) -> str:
    """Digits for number words and a crude singular, so that "two lesions" and "2 lesion" meet."""
    word = _NUMBER_WORDS.get(word, word)
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_words(text: str) -> set[str]:
    """Normalized words of ``text`` without function words."""
    return {_normalize(word) for word in _TOKEN.findall(text.lower()) if word not in _STOPWORDS}


def is_open_ended(task: SynthesizedTask) -> bool:
    """A question that asks for a description or an explanation, or a precise answer too long to be one fact."""
    question = " ".join(task.question.lower().split())
    return question.startswith(OPEN_QUESTION_OPENINGS) or len(task.precise.split()) > MAX_PRECISE_WORDS


def lexical_label(task: SynthesizedTask) -> Label:
    """Open if open-ended; Yes if every content word of the precise answer is in the informative answer; else No."""
    if is_open_ended(task):
        return "open"
    precise_words = content_words(task.precise)
    return "yes" if precise_words and precise_words <= content_words(task.informative) else "no"
