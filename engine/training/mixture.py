"""Training mixtures: instruction rows (or seed-task rows) -> the conversations a model is trained on.

A conversation is a dict ``{"id", "messages", "images", "loss_from"}``: ``messages`` are ``{"role", "content"}`` turns
with ``<image>`` placeholders, ``images`` the encoded images in placeholder order, and ``loss_from`` says where the
loss goes: ``None`` = on assistant turns only (post-training), an index = on everything from that message on
(synthesizer tuning, where the model must also write the user turns).

An instruction row (EXAMPLE_SCHEMA, as synthesis composes it) holds the caption exchange first (the record's own
instruction, or "Describe the image.", -> caption) and, when a task was kept, the synthetic exchange after it. Since
instructions differ per record, the caption exchange is known by its place, not its text: a row's `kind`, when it has
one, says whether it holds a caption exchange; a row without one (the training stream, LLaMA-Factory JSON as
`adapt export` writes it) holds one first, as every row synthesis writes does. The mixtures (DESIGN.md section 4):

- ``single_stage`` (the paper's method): one conversation per image, the caption exchange placed first or last at
  random (seeded per row);
- ``two_stage`` (ablation): a phase of caption conversations, then a phase of synthetic ones;
- ``caption_only`` / ``synthetic_only`` (ablations): one of those phases alone.

Every draw uses ``random.Random(f"{seed}:{row id}")``: the same row gets the same conversation in every process, run
and resume, whatever order the rows arrive in. The synthesizer-tuning dev split is the one whole-set draw
(``dev_ids``, a shuffle per seed task seeded ``f"{seed}:dev:{task name}"``), made once before training.
"""

from __future__ import annotations

import functools
import io
import random
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image

from engine.models.families import IMAGE_PLACEHOLDER
from engine.records import image_bytes
from engine.synthesis.prompts import CAPTION_INSTRUCTION, INFORMATIVE_HINT, PRECISE_HINT

Mixture = Literal["single_stage", "two_stage", "caption_only", "synthetic_only"]
Conversation = dict[str, Any]

CAPTION_PHASE = "captions"
INSTRUCTION_PHASE = "instructions"
SINGLE_STAGE_PHASE = "train"
SYNTHESIZER_PHASE = "synthesizer"

# A synthesizer conversation is user (image + caption instruction), assistant (caption), then the QA turns: the loss
# starts at message 2.
SYNTHESIZER_LOSS_FROM = 2


@dataclass(frozen=True)
class Exchange:
    """One user turn and the assistant's answer to it."""

    user: str
    assistant: str


@dataclass(frozen=True)
class Example:
    """An instruction row taken apart: its caption exchange (if any) and its synthetic exchanges, images stripped of
    their placeholders (``place_images`` puts them back where the conversation starts)."""

    id: str
    images: list[bytes]
    system: str | None
    caption: Exchange | None
    synthetic: list[Exchange]


def rng_for(seed: int, row_id: str) -> random.Random:
    """A generator that depends on the seed and the row id only (string seeds hash with SHA-512, not Python's salt)."""
    return random.Random(f"{seed}:{row_id}")


def strip_placeholders(text: str) -> tuple[str, int]:
    """The text without its ``<image>`` placeholders (and the newline each is written with), and how many there were."""
    count = text.count(IMAGE_PLACEHOLDER)
    return text.replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, ""), count


def parse_example(row: dict[str, Any]) -> Example:
    """Split a row's messages into exchanges; the first is the caption exchange unless the row's `kind` says it has
    none (see the module docstring)."""
    messages = list(row["messages"])
    system = messages.pop(0)["content"] if messages and messages[0]["role"] == "system" else None
    roles = [message["role"] for message in messages]
    if len(messages) % 2 or roles != ["user", "assistant"] * (len(messages) // 2):
        raise ValueError(f"example {row['id']!r}: messages must alternate user/assistant turns, got {roles}")
    images = [image_bytes(image) for image in row["images"] or []]
    placeholders = 0
    exchanges = []
    for user, assistant in zip(messages[::2], messages[1::2]):
        text, count = strip_placeholders(user["content"])
        placeholders += count
        exchanges.append(Exchange(text, assistant["content"]))
    if placeholders != len(images):
        raise ValueError(f"example {row['id']!r}: {placeholders} <image> placeholders for {len(images)} images")
    with_caption = bool(exchanges) and has_caption(row.get("kind") or "caption")
    return Example(
        id=row["id"],
        images=images,
        system=system,
        caption=exchanges[0] if with_caption else None,
        synthetic=exchanges[1:] if with_caption else exchanges,
    )


def place_images(exchanges: Sequence[Exchange], image_count: int) -> list[Exchange]:
    """Every image goes at the start of the first user turn, as in the caption prompt ("<image>\\n...")."""
    if not exchanges or not image_count:
        return list(exchanges)
    first = exchanges[0]
    prefix = (IMAGE_PLACEHOLDER + "\n") * image_count
    return [Exchange(prefix + first.user, first.assistant), *exchanges[1:]]


def to_conversation(example: Example, exchanges: Sequence[Exchange], loss_from: int | None = None) -> Conversation:
    messages = [{"role": "system", "content": example.system}] if example.system is not None else []
    for exchange in place_images(exchanges, len(example.images)):
        messages += [{"role": "user", "content": exchange.user}, {"role": "assistant", "content": exchange.assistant}]
    return {"id": example.id, "messages": messages, "images": example.images, "loss_from": loss_from}


# ---------------------------------------------------------------------------------------------- post-training mixtures


def single_stage(row: dict[str, Any], seed: int) -> list[Conversation]:
    """One conversation per image: caption exchange and synthetic exchanges, the caption first or last at random."""
    example = parse_example(row)
    exchanges = list(example.synthetic)
    if example.caption is not None:
        caption_last = bool(exchanges) and rng_for(seed, example.id).random() < 0.5
        exchanges = [*exchanges, example.caption] if caption_last else [example.caption, *exchanges]
    return [to_conversation(example, exchanges)] if exchanges else []


def caption_conversations(row: dict[str, Any], seed: int) -> list[Conversation]:
    """The caption exchange alone (the first phase of two-stage training, or the caption-only ablation)."""
    example = parse_example(row)
    return [to_conversation(example, [example.caption])] if example.caption is not None else []


def synthetic_conversations(row: dict[str, Any], seed: int) -> list[Conversation]:
    """The synthetic exchanges alone, with the image moved onto the first question."""
    example = parse_example(row)
    return [to_conversation(example, example.synthetic)] if example.synthetic else []


RowExpander = Callable[[dict[str, Any], int], list[Conversation]]

# Each mixture is a sequence of phases, trained one after the other; a phase is a name and how it expands a row.
MIXTURES: dict[str, list[tuple[str, RowExpander]]] = {
    "single_stage": [(SINGLE_STAGE_PHASE, single_stage)],
    "two_stage": [(CAPTION_PHASE, caption_conversations), (INSTRUCTION_PHASE, synthetic_conversations)],
    "caption_only": [(CAPTION_PHASE, caption_conversations)],
    "synthetic_only": [(INSTRUCTION_PHASE, synthetic_conversations)],
}


def phases(mixture: Mixture) -> list[tuple[str, RowExpander]]:
    if mixture not in MIXTURES:
        raise ValueError(f"unknown mixture {mixture!r}; known: {', '.join(MIXTURES)}")
    return MIXTURES[mixture]


def has_caption(kind: str) -> bool:
    return kind in ("caption", "caption+synthetic")


def has_synthetic(kind: str) -> bool:
    return kind in ("synthetic", "caption+synthetic")


def example_kind(row: dict[str, Any]) -> str:
    """The row's `kind` as synthesis writes it, recomputed from its messages (for rows that do not carry one)."""
    example = parse_example(row)
    parts = [name for name, present in (("caption", example.caption), ("synthetic", example.synthetic)) if present]
    return "+".join(parts)


def phase_counts(kinds: Iterable[str], mixture: Mixture) -> dict[str, int]:
    """How many conversations each phase of `mixture` makes from rows of these kinds, without expanding them."""
    counts = {name: 0 for name, _ in phases(mixture)}
    for kind in kinds:
        for name in counts:
            if name == SINGLE_STAGE_PHASE:
                counts[name] += has_caption(kind) or has_synthetic(kind)
            elif name == CAPTION_PHASE:
                counts[name] += has_caption(kind)
            else:
                counts[name] += has_synthetic(kind)
    return counts


# ------------------------------------------------------------------------------------------------ synthesizer tuning


# The release's blank image is a white 237 x 150 JPEG; this one is made the same way, not copied.
BLANK_IMAGE_SIZE = (237, 150)


@functools.cache
def blank_image() -> bytes:
    """The white JPEG that stands in for an image the synthesizer must not see."""
    buffer = io.BytesIO()
    Image.new("RGB", BLANK_IMAGE_SIZE, (255, 255, 255)).save(buffer, format="JPEG")
    return buffer.getvalue()


def dev_ids(rows: Iterable[tuple[str, str | None]], seed: int, dev_fraction: float) -> frozenset[str]:
    """The ids of the seed-task rows held out as the dev split, from each row's `(id, task_name)`.

    The split is the release's: each seed task on its own (rows sharing a `task_name`; rows with none or an empty one
    are one task), its rows shuffled and the first int(n * (1 - dev_fraction)) kept for training, the rest dev. int()
    truncates, as the release's `int(0.9 * n)` cut does, so a task of 15 rows holds out 2 and a task of one row holds
    out its only row. The shuffle needs every row of a task, so it runs once on the driver over the ids (seed-task sets
    are thousands of rows). It is seeded by the run's seed and the task's name, where the release uses a fixed seed,
    and it starts from the ids sorted, where the release starts from its file order: the split is then the same
    whatever order the files are read in.
    """
    tasks: dict[str, list[str]] = {}
    for row_id, task_name in rows:
        tasks.setdefault(task_name or "", []).append(row_id)
    held_out: set[str] = set()
    for task_name, ids in tasks.items():
        ids.sort()
        random.Random(f"{seed}:dev:{task_name}").shuffle(ids)
        held_out.update(ids[int(len(ids) * (1 - dev_fraction)):])
    return frozenset(held_out)


def synthesizer_conversation(row: dict[str, Any], seed: int, blank_image_fraction: float,
                             dev: Collection[str] = frozenset()) -> list[Conversation]:
    """A seed-task row (SEED_TASK_SCHEMA) as a synthesizer learns it (DESIGN.md section 4); none for a dev row.

    The caption exchange comes first, then every task as two QA exchanges, one per hint, all shuffled together: the
    synthesizer learns to write questions under both hints in any order, and synthesis keeps the first question that
    appears under both. The loss covers everything after the caption exchange, user turns included, since the
    synthesizer writes those too. With probability `blank_image_fraction` the image is replaced by the blank image, so
    the model also learns to work from the caption alone. A row whose id is in `dev` (see `dev_ids`) is held out: the
    release keeps 10% of each seed task out of training.
    """
    if row["id"] in dev:
        return []
    rng = rng_for(seed, row["id"])
    qa = []
    for task in row["tasks"] or []:
        qa.append(Exchange(f"{PRECISE_HINT}\n{task['question']}", task["precise"]))
        qa.append(Exchange(f"{INFORMATIVE_HINT}\n{task['question']}", task["informative"]))
    rng.shuffle(qa)
    image = blank_image() if rng.random() < blank_image_fraction else row["image"]
    example = Example(row["id"], [image], None, Exchange(CAPTION_INSTRUCTION, row["caption"]), qa)
    return [to_conversation(example, [example.caption, *qa], loss_from=SYNTHESIZER_LOSS_FROM)]
