"""Collation: conversations -> model inputs with labels, through the model family's format and the model's processor.

The text is the family's rendering (``engine.models.families.render``), the same strings synthesis and evaluation
prompt the model with, so training and inference agree by construction; for Qwen2-VL it equals the model's ChatML chat
template (tests check it on the tiny model). The processor then does everything model-specific: it expands each image
token into the image's patch tokens and returns the pixel tensors (Qwen2-VL: ``pixel_values``, ``image_grid_thw`` and
``mm_token_type_ids``, which transformers 5 needs for M-RoPE). Where the processor expands another image token than the
family's format writes, the format writes the processor's.

Labels. While rendering, the character spans that carry loss are recorded:
- post-training (``loss_from`` None): each assistant turn's content and its end-of-turn token, so the model learns to
  stop (the layout newline ChatML writes after ``<|im_end|>`` is never generated, so it is not labelled);
- synthesizer tuning (``loss_from`` = k): everything from message k on, its own header included (as in the release's
  tuning, whose first QA round starts at that user header), later headers and user turns included, plus the
  end-of-text token appended at the end: the synthesizer writes all of it and stops where synthesis stops.
The unexpanded text is tokenized with offsets, a token is labelled when it lies inside a span, and the labels are
carried over to the processor's expanded ids run by run (an image-token run maps to a longer run, never labelled).

Truncation (``max_length`` counts expanded tokens): a longer example keeps its first ``max_length`` tokens when every
image token and the token that closes the image lie before the cut; otherwise it is dropped, since half an image does
not match its pixels. An example left without labelled tokens is dropped too. ``Collator.counts`` counts each case.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers import PreTrainedTokenizerBase, ProcessorMixin

from engine.models.families import IMAGE_PLACEHOLDER, ModelFamily, get_family, render
from engine.models.loading import chat_format, tokenizer_of

IGNORE_INDEX = -100
# Per-token tensors (shape [1, length, ...]): truncation cuts them and batching pads their second dimension.
TOKEN_KEYS = frozenset({"input_ids", "attention_mask", "labels", "mm_token_type_ids", "token_type_ids",
                        "cross_attention_mask"})

# Counter keys
KEPT = "examples"
TRUNCATED = "truncated"
DROPPED_IMAGE_OVER_LENGTH = "dropped_image_over_length"
DROPPED_NO_LABELS = "dropped_no_labels"
DROPPED_UNREADABLE_IMAGE = "dropped_unreadable_image"
DROP_REASONS = (DROPPED_IMAGE_OVER_LENGTH, DROPPED_NO_LABELS, DROPPED_UNREADABLE_IMAGE)


class CollationError(ValueError):
    """The processor's tokens do not line up with the tokenizer's: labels cannot be placed safely."""


@dataclass(frozen=True)
class Rendered:
    """A conversation's training text and the character spans [start, end) that carry loss."""

    text: str
    spans: list[tuple[int, int]]


def render_with_spans(family: ModelFamily | str, messages: Sequence[Mapping[str, str]],
                      loss_from: int | None = None) -> Rendered:
    """The family's rendering of `messages` and its labelled spans (see the module docstring)."""
    family = get_family(family)
    text = render(family, messages)
    # render() is a concatenation of turns, so the rendering of the first i+1 messages ends where message i ends.
    ends = [len(render(family, messages[: index + 1])) for index in range(len(messages))]
    if loss_from is not None:
        if not 0 < loss_from < len(messages):
            raise ValueError(f"loss_from {loss_from} is outside the conversation's {len(messages)} messages")
        start = ends[loss_from - 1]
        text += family.end_of_text
        return Rendered(text, [(start, len(text))])
    layout = len(family.turn_end) - len(family.end_of_turn)  # whitespace written after the end-of-turn token
    spans = [
        (ends[index - 1] + len(family.header("assistant")), ends[index] - layout)
        for index, message in enumerate(messages)
        if message["role"] == "assistant" and index > 0
    ]
    return Rendered(text, spans)


def labelled_tokens(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Whether each token (by its character offsets) lies inside a labelled span. Special tokens a tokenizer adds on
    its own have empty offsets and are never labelled."""
    return [end > start and any(low <= start and end <= high for low, high in spans) for start, end in offsets]


def _run_end(ids: Sequence[int], start: int) -> int:
    end = start
    while end < len(ids) and ids[end] == ids[start]:
        end += 1
    return end


def expand_labels(tokens: Sequence[int], labelled: Sequence[bool], expanded: Sequence[int],
                  image_token_id: int | None) -> list[int]:
    """Labels for the processor's ids, from the tokenizer's ids and their labelled flags.

    The two sequences are equal except that each run of image tokens may be longer in `expanded`; any other
    difference means the processor tokenized the text differently, and the labels would be misplaced.
    """
    labels: list[int] = []
    i = j = 0
    while i < len(tokens) and j < len(expanded):
        if tokens[i] != expanded[j]:
            raise CollationError(f"token {i} is {tokens[i]} for the tokenizer but {expanded[j]} for the processor")
        if tokens[i] == image_token_id:
            i_end, j_end = _run_end(tokens, i), _run_end(expanded, j)
            if any(labelled[i:i_end]):
                raise CollationError("an image token lies inside a labelled span")
            labels += [IGNORE_INDEX] * (j_end - j)
            i, j = i_end, j_end
        else:
            labels.append(tokens[i] if labelled[i] else IGNORE_INDEX)
            i, j = i + 1, j + 1
    if i != len(tokens) or j != len(expanded):
        raise CollationError(f"the processor made {len(expanded)} tokens, which do not cover the tokenizer's "
                             f"{len(tokens)}")
    return labels


def decode_images(images: Sequence[bytes]) -> list[Image.Image]:
    """RGB images; decoding is forced here so a corrupt file fails now, with a reason, not inside the processor."""
    return [Image.open(io.BytesIO(data)).convert("RGB") for data in images]


def _pad_to(tensor: torch.Tensor, shape: Sequence[int], value: float) -> torch.Tensor:
    """Pad every dimension after the first, at the end, up to `shape`."""
    padding: list[int] = []
    for size, target in zip(reversed(tensor.shape[1:]), reversed(shape)):
        padding += [0, target - size]
    return torch.nn.functional.pad(tensor, padding, value=value) if any(padding) else tensor


def pad_batch(encoded: Sequence[Mapping[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One batch from encoded examples: per-token tensors padded on the right (ids with the pad token, labels with
    IGNORE_INDEX, masks with 0), image tensors concatenated along their first dimension (zero-padded where their other
    dimensions differ, as for per-image tile counts)."""
    batch = {}
    for key in dict.fromkeys(key for example in encoded for key in example):
        tensors = [example[key] for example in encoded if key in example]
        if key in TOKEN_KEYS and len(tensors) != len(encoded):
            raise CollationError(f"per-token tensor {key!r} is missing from some examples")
        shape = [max(sizes) for sizes in zip(*(tensor.shape[1:] for tensor in tensors))]
        value = pad_token_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
        batch[key] = torch.cat([_pad_to(tensor, shape, value) for tensor in tensors])
    return batch


class Collator:
    """Turns conversations (``engine.training.mixture``) into padded batches for one model; counts what it cut."""

    def __init__(self, processor: ProcessorMixin | PreTrainedTokenizerBase, family: ModelFamily | str,
                 max_length: int):
        self.processor = processor
        self.max_length = max_length
        self.tokenizer = tokenizer_of(processor)
        # The format as this checkpoint needs it: the image token its processor expands, its tokenizer's BOS.
        self.family = chat_format(family, processor).family
        image_token = getattr(processor, "image_token", None)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(image_token) if image_token else None
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:  # Llama-3 tokenizers have none; padding is masked, so any id does
            self.pad_token_id = self.tokenizer.eos_token_id
        self.counts: Counter[str] = Counter()

    def __call__(self, conversations: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor] | None:
        """A padded batch of the conversations that survive; None when none does."""
        encoded = [example for example in map(self.encode, conversations) if example is not None]
        return pad_batch(encoded, self.pad_token_id) if encoded else None

    def encode(self, conversation: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
        """One example's tensors (each with a leading dimension of 1), or None when it is dropped (counted)."""
        messages = conversation["messages"]
        placeholders = sum(message["content"].count(IMAGE_PLACEHOLDER) for message in messages)
        if placeholders != len(conversation["images"]):
            raise ValueError(f"example {conversation['id']!r}: {placeholders} <image> placeholders for "
                             f"{len(conversation['images'])} images")
        try:
            images = decode_images(conversation["images"])
        except (OSError, UnidentifiedImageError, ValueError):
            self.counts[DROPPED_UNREADABLE_IMAGE] += 1
            return None
        rendered = render_with_spans(self.family, messages, conversation.get("loss_from"))
        # The rendered text carries every special token, the BOS included (chat_format): nothing is added, as at
        # inference.
        plain = self.tokenizer(rendered.text, return_offsets_mapping=True, add_special_tokens=False)
        inputs = self.processor(text=[rendered.text], images=[images] if images else None, add_special_tokens=False,
                                return_tensors="pt")
        example = {key: value for key, value in inputs.items() if isinstance(value, torch.Tensor)}
        labels = expand_labels(plain["input_ids"], labelled_tokens(plain["offset_mapping"], rendered.spans),
                               example["input_ids"][0].tolist(), self.image_token_id)
        example["labels"] = torch.tensor([labels])
        return self._fit(example)

    def _fit(self, example: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Apply the truncation rules of the module docstring."""
        ids = example["input_ids"][0]
        if len(ids) > self.max_length:
            image_positions = (ids == self.image_token_id).nonzero() if self.image_token_id is not None else []
            if len(image_positions) and int(image_positions.max()) + 1 >= self.max_length:
                self.counts[DROPPED_IMAGE_OVER_LENGTH] += 1
                return None
            example = {key: value[:, : self.max_length] if key in TOKEN_KEYS else value
                       for key, value in example.items()}
            self.counts[TRUNCATED] += 1
        if not bool((example["labels"] != IGNORE_INDEX).any()):
            self.counts[DROPPED_NO_LABELS] += 1
            return None
        self.counts[KEPT] += 1
        return example
