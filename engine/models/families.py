"""Prompt formats of the supported model families, as data, and one renderer over them.

A conversation is a list of ``{"role", "content"}`` messages (roles ``system``, ``user``, ``assistant``) whose text
marks each image with the ``<image>`` placeholder (ShareGPT / LLaMA-Factory style). ``render`` turns it into the exact
prompt string a family's model was trained on; every family differs only in the strings held by its ``ModelFamily``.

Where each family's strings come from:
- ``llava-llama3``: the ``conv_llava_llama_3`` template of Open-LLaVA-NeXT (github.com/xiaoachen98/Open-LLaVA-NeXT,
  llava/conversation.py), the base of the paper's LLaVA-v1.6-8B and of the released AdaMLLM synthesizer: the Llama-3
  headers, ``<|eot_id|>`` after every turn with no newline, ``<|begin_of_text|>`` written into the prompt text, and the
  LLaVA system prompt (the same text as LLaVA-NeXT's ``conv_llava_llama_3``). The image token is
  ``<|reserved_special_token_4|>``, the ``image_token`` of AdaptLLM/visual-instruction-synthesizer's
  processor_config.json on the Hugging Face hub.
- ``qwen2-vl``: the ChatML chat template of Qwen/Qwen2-VL-*-Instruct: ``<|im_start|>{role}\\n ... <|im_end|>\\n``, the
  default system prompt "You are a helpful assistant." when the conversation has none, and
  ``<|vision_start|><|image_pad|><|vision_end|>`` for an image.
- ``mllama``: the chat template of meta-llama/Llama-3.2-11B-Vision-Instruct: ``<|begin_of_text|>``, Llama-3 headers,
  ``<|eot_id|>`` after every turn, ``<|image|>`` for an image, no default system prompt.

Each ``<image>`` is replaced by the family's image token and the text around it is kept as written, the way
LLaMA-Factory's multimodal plugins do, so that prompts and training data agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<image>"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ModelFamily:
    """The strings that make up one family's chat format.

    A turn renders as ``role_open + role + role_close + content + turn_end``; a rendering starts with ``begin``.
    """

    name: str
    image_token: str
    begin: str
    role_open: str
    role_close: str
    turn_end: str
    end_of_text: str
    default_system: str | None

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

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (LLAVA_LLAMA3, QWEN2_VL, MLLAMA)}


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
        family.header(role) + content.replace(IMAGE_PLACEHOLDER, family.image_token) + family.turn_end
        for role, content in turns
    )
    if add_generation_prompt:
        text += family.header("assistant")
    if open_user_turn:
        text += family.header("user")
    return text


def _check_roles(messages: Sequence[Mapping[str, str]]) -> None:
    """Refuse unknown roles and a system message anywhere but first: a template would silently misplace them."""
    for index, message in enumerate(messages):
        role = message["role"]
        if role not in ROLES:
            raise ValueError(f"message {index} has role {role!r}; expected one of {ROLES}")
        if role == "system" and index != 0:
            raise ValueError(f"message {index} is a system message; only the first message may be one")
