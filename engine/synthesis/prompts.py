"""The visual-instruction synthesizer's prompt.

The synthesizer sees one image-caption pair as a chat that has already happened: the user asked for a description of
the image and the assistant answered with the caption. The prompt then opens a new user turn, and the synthesizer
continues the conversation on its own, writing user turns "Answer with a precise response.\\n{question}" or
"Answer with an informative response.\\n{question}", each followed by an assistant answer. ``parsing`` reads those turns
back.

For the released synthesizer (AdaptLLM/visual-instruction-synthesizer, ``llava-llama3`` family) the rendered text is,
byte for byte (``{caption}`` stands for the caption)::

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{LLAVA_SYSTEM_PROMPT}<|eot_id|>
    <|start_header_id|>user<|end_header_id|>\\n\\n<|reserved_special_token_4|>\\nDescribe the image.<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n{caption}<|eot_id|><|start_header_id|>user<|end_header_id|>\\n\\n

(shown on four lines; the real text has no line breaks between the turns). Sources of the facts:
- the turn layout, the system prompt and the ``<|begin_of_text|>`` at the start of the text: Open-LLaVA-NeXT's
  ``conv_llava_llama_3`` template (see ``engine.models.families``), which the synthesizer's base model
  (Lin-Chen/open-llava-next-llama3-8b, named in the model card) was trained with; AdaMLLM's public release renders the
  synthesizer prompt with that same template, and notes that the tokenizer adds a second BOS token, as in training;
- the image token: ``image_token`` in the model's processor_config.json on the hub;
- the caption instruction "Describe the image." and the two hints: AdaMLLM's public release (bigai-ai/QA-Synthesizer)
  and the paper (arXiv 2411.19930), which build the synthesizer's training conversations from them;
- the decoding settings below (greedy, 512 new tokens, special tokens kept, stop only at the end of the document so that
  several QA turns come out): the same release.

A synthesizer tuned from another family (e.g. ``qwen2-vl``) gets the same conversation in its own format.
"""

from __future__ import annotations

from engine.models.families import IMAGE_PLACEHOLDER, ModelFamily, get_family, render

# Bump whenever the rendered text of any family changes: task rows record it as lineage.
PROMPT_VERSION = "adamllm-synthesizer-v1"

CAPTION_INSTRUCTION = "Describe the image."
PRECISE_HINT = "Answer with a precise response."
INFORMATIVE_HINT = "Answer with an informative response."

MAX_NEW_TOKENS = 512
TEMPERATURE = 0.0


# Stands in for the caption while the family renders the turns; no text holds it (NUL characters).
_CAPTION_SLOT = "\x00caption\x00"


def synthesizer_messages(caption: str) -> list[dict[str, str]]:
    """The caption exchange the synthesizer continues from."""
    return [
        {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{CAPTION_INSTRUCTION}"},
        {"role": "assistant", "content": caption},
    ]


def synthesizer_prompt(caption: str, family: ModelFamily | str = "llava-llama3") -> str:
    """The full prompt text for one caption, ending in an open user turn.

    The caption goes in verbatim, as the release sends it: rendering would turn an ``<image>`` written in a caption
    into a second image token (with one image to fill it), so the turns are rendered around a slot and the caption
    is put in the slot afterwards."""
    return render(family, synthesizer_messages(_CAPTION_SLOT), open_user_turn=True).replace(_CAPTION_SLOT, caption)


def synthesizer_stop(family: ModelFamily | str = "llava-llama3") -> tuple[str, ...]:
    """Stop strings for synthesis: only the end of the document, since the end of a turn is not the end of the work."""
    return (get_family(family).end_of_text,)
