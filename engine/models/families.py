"""Prompt formats of the supported model families, as data, and one renderer over them.

A conversation is a list of ``{"role", "content"}`` messages (roles ``system``, ``user``, ``assistant``) whose text
marks each image with the ``<image>`` placeholder, ShareGPT / LLaMA-Factory style, usually as ``<image>\n{text}``.
``render`` turns it into the exact prompt string a family's checkpoints were trained on; every family differs only in
the strings held by its ``ModelFamily``. The newline after a placeholder is the image's separator: each family writes
its own there (the checkpoints' chat templates differ on it).

Where each family's strings come from (tests/models/test_checkpoint_formats.py renders every family both ways, here and
through a tiny checkpoint's own chat template, and compares the token ids):
- ``llava-llama3``: the ``conv_llava_llama_3`` template of Open-LLaVA-NeXT (github.com/xiaoachen98/Open-LLaVA-NeXT,
  llava/conversation.py), the base of the paper's LLaVA-v1.6-8B and of the released AdaMLLM synthesizer: the Llama-3
  headers, ``<|eot_id|>`` after every turn with no newline, ``<|begin_of_text|>`` written into the prompt text, the
  LLaVA system prompt, and ``{image}\n{text}``. Its checkpoints were trained with the tokenizer's own BOS in front of
  the written one, and AdaMLLM's evaluation keeps both, so this family keeps the two BOS. The image token is
  ``<|reserved_special_token_4|>``, the ``image_token`` of AdaptLLM/visual-instruction-synthesizer's
  processor_config.json.
- ``llava-hf-llama3``: the chat template of llava-hf/llama3-llava-next-8b-hf (its chat_template.json), the LLaVA-NeXT
  checkpoint the LLaVA recipes train: Llama-3 headers, no system prompt, ``<image>`` then every text part written as
  ``\n{text}<|eot_id|>`` (assistant answers too), no BOS in the text (the tokenizer adds it).
- ``qwen2-vl`` (Qwen2-VL and Qwen2.5-VL): the ChatML chat template of Qwen/Qwen2-VL-*-Instruct and
  Qwen/Qwen2.5-VL-*-Instruct: ``<|im_start|>{role}\n ... <|im_end|>\n``, the default system prompt "You are a
  helpful assistant." when the conversation has none, and ``<|vision_start|><|image_pad|><|vision_end|>`` for an image
  with the text right after it.
- ``mllama``: the chat template of meta-llama/Llama-3.2-11B-Vision-Instruct: ``<|begin_of_text|>``, Llama-3 headers,
  ``<|eot_id|>`` after every turn, ``<|image|>`` for an image with the text right after it, no system prompt with
  images.

Each ``<image>`` becomes the family's image token and the rest of the text is kept as written, the way LLaMA-Factory's
multimodal plugins do, so that prompts and training data agree. What a checkpoint itself decides (the image token its
processor expands, the BOS its tokenizer adds) is read from it by ``for_checkpoint``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

IMAGE_PLACEHOLDER = "<image>"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ModelFamily:
    """The strings that make up one family's chat format.

    A turn renders as ``role_open + role + role_close + content + turn_end``; a rendering starts with ``begin``. In the
    content, each image is ``image_token + image_separator`` and each text piece ``text_prefix + text``.
    ``double_bos``: the family's checkpoints were trained with the tokenizer's BOS in front of the written ``begin``,
    so a rendering for such a checkpoint starts with both (see ``for_checkpoint``).
    """

    name: str
    image_token: str
    begin: str
    role_open: str
    role_close: str
    turn_end: str
    end_of_text: str
    default_system: str | None
    image_separator: str = ""
    text_prefix: str = ""
    double_bos: bool = False

    def header(self, role: str) -> str:
        """The text that opens a turn of ``role``; also what a generation prompt appends."""
        return f"{self.role_open}{role}{self.role_close}"

    @property
    def end_of_turn(self) -> str:
        """The turn-closing special token without the layout whitespace some families add after it."""
        return self.turn_end.strip()

    @property
    def stop(self) -> tuple[str, ...]:
        """Where a single answer ends: the end of its turn, or the end of the document."""
        return (self.end_of_turn, self.end_of_text)


LLAVA_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)

LLAVA_LLAMA3 = ModelFamily(
    name="llava-llama3",
    image_token="<|reserved_special_token_4|>",
    begin="<|begin_of_text|>",
    role_open="<|start_header_id|>",
    role_close="<|end_header_id|>\n\n",
    turn_end="<|eot_id|>",
    end_of_text="<|end_of_text|>",
    default_system=LLAVA_SYSTEM_PROMPT,
    image_separator="\n",
    double_bos=True,
)

LLAVA_HF_LLAMA3 = ModelFamily(
    name="llava-hf-llama3",
    image_token="<image>",
    begin="",
    role_open="<|start_header_id|>",
    role_close="<|end_header_id|>\n\n",
    turn_end="<|eot_id|>",
    end_of_text="<|end_of_text|>",
    default_system=None,
    text_prefix="\n",
)

QWEN2_VL = ModelFamily(
    name="qwen2-vl",
    image_token="<|vision_start|><|image_pad|><|vision_end|>",
    begin="",
    role_open="<|im_start|>",
    role_close="\n",
    turn_end="<|im_end|>\n",
    end_of_text="<|endoftext|>",
    default_system="You are a helpful assistant.",
)

MLLAMA = ModelFamily(
    name="mllama",
    image_token="<|image|>",
    begin="<|begin_of_text|>",
    role_open="<|start_header_id|>",
    role_close="<|end_header_id|>\n\n",
    turn_end="<|eot_id|>",
    end_of_text="<|end_of_text|>",
    default_system=None,
)

FAMILIES: dict[str, ModelFamily] = {
    family.name: family for family in (LLAVA_LLAMA3, LLAVA_HF_LLAMA3, QWEN2_VL, MLLAMA)
}


def get_family(family: ModelFamily | str) -> ModelFamily:
    """Look a family up by name (a ``ModelFamily`` passes through), with the known names in the error."""
    if isinstance(family, ModelFamily):
        return family
    try:
        return FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}") from None


def render(
    family: ModelFamily | str,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = False,
    open_user_turn: bool = False,
) -> str:
    """Render ``messages`` in ``family``'s format.

    ``add_generation_prompt`` ends the text with an open assistant header (the model answers);
    ``open_user_turn`` ends it with an open user header (the model writes the next user turn, as the synthesizer does).
    """
    if add_generation_prompt and open_user_turn:
        raise ValueError("add_generation_prompt and open_user_turn are exclusive: the prompt opens one turn")
    family = get_family(family)
    _check_roles(messages)
    turns = [(message["role"], message["content"]) for message in messages]
    if family.default_system is not None and (not turns or turns[0][0] != "system"):
        turns.insert(0, ("system", family.default_system))
    text = family.begin + "".join(
        family.header(role) + render_content(family, content) + family.turn_end for role, content in turns
    )
    if add_generation_prompt:
        text += family.header("assistant")
    if open_user_turn:
        text += family.header("user")
    return text


def content_parts(content: str) -> list[str | None]:
    """A message's text as parts in order: None for an image, a string for a text piece. The newline right after an
    image placeholder is the image's separator, not text (``<image>\nWhat is shown?`` is an image and "What is
    shown?"); empty pieces are left out. This is also how the content becomes typed chat-template parts."""
    parts: list[str | None] = []
    for index, piece in enumerate(content.split(IMAGE_PLACEHOLDER)):
        if index:
            parts.append(None)
            piece = piece.removeprefix("\n")
        if piece:
            parts.append(piece)
    return parts


def chat_template_messages(messages: Sequence[Mapping[str, str]]) -> list[dict]:
    """The conversation as Hugging Face chat templates (and OpenAI-style chat APIs) take it: each content a list of
    typed parts, ``{"type": "image"}`` and ``{"type": "text", "text": ...}``, split as ``content_parts`` splits it."""
    return [{"role": message["role"],
             "content": [{"type": "image"} if part is None else {"type": "text", "text": part}
                         for part in content_parts(message["content"])]}
            for message in messages]


def render_content(family: ModelFamily, content: str) -> str:
    return "".join(family.image_token + family.image_separator if part is None else family.text_prefix + part
                   for part in content_parts(content))


def for_checkpoint(family: ModelFamily | str, *, image_token: str | None, bos: str) -> ModelFamily:
    """The family's format as a given checkpoint needs it, with every special token written out, so that engines
    tokenize the text as it is and add nothing (processors differ on whether and how they add a BOS; Mllama's adds a
    second one to a text that lacks it). From the checkpoint: the image token its processor expands (a llava-llama3
    checkpoint converted by llava-hf expands ``<image>``, the released synthesizer ``<|reserved_special_token_4|>``)
    and `bos`, the BOS its tokenizer puts in front of a text ("" when it adds none). A family that writes a BOS itself
    keeps it (once); a ``double_bos`` family gets the tokenizer's in front of its own, as in its training."""
    family = get_family(family)
    if image_token and image_token not in family.image_token:
        family = replace(family, image_token=image_token)
    begin = bos + family.begin if family.double_bos else family.begin or bos
    return replace(family, begin=begin)


def _check_roles(messages: Sequence[Mapping[str, str]]) -> None:
    """Refuse unknown roles and a system message anywhere but first: a template would silently misplace them."""
    for index, message in enumerate(messages):
        role = message["role"]
        if role not in ROLES:
            raise ValueError(f"message {index} has role {role!r}; expected one of {ROLES}")
        if role == "system" and index != 0:
            raise ValueError(f"message {index} is a system message; only the first message may be one")
