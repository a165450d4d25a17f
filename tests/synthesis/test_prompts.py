from __future__ import annotations

import pytest

from engine.synthesis.prompts import (
    CAPTION_INSTRUCTION,
    INFORMATIVE_HINT,
    PRECISE_HINT,
    PROMPT_VERSION,
    synthesizer_messages,
    synthesizer_prompt,
    synthesizer_stop,
)

CAPTION = "Axial CT of the abdomen showing a 3 cm hypodense lesion in the right lobe of the liver."

# The released AdaMLLM synthesizer's input, byte for byte (Open-LLaVA-NeXT's llava_llama_3 template, the image token
# of AdaptLLM/visual-instruction-synthesizer's processor_config.json, an open user turn at the end).
ADAMLLM_PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "<|reserved_special_token_4|>\nDescribe the image.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    "Axial CT of the abdomen showing a 3 cm hypodense lesion in the right lobe of the liver.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
)


def test_adamllm_synthesizer_prompt_is_byte_exact():
    prompt = synthesizer_prompt(CAPTION)
    assert prompt == ADAMLLM_PROMPT
    assert prompt.encode("utf-8") == ADAMLLM_PROMPT.encode("utf-8")


def test_llava_llama3_is_the_default_family():
    assert synthesizer_prompt(CAPTION) == synthesizer_prompt(CAPTION, "llava-llama3")


def test_qwen2_vl_synthesizer_gets_the_same_conversation_in_chatml():
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"
        f"<|im_start|>assistant\n{CAPTION}<|im_end|>\n"
        "<|im_start|>user\n"
    )
    assert synthesizer_prompt(CAPTION, "qwen2-vl") == expected


def test_mllama_synthesizer_prompt_ends_in_an_open_user_turn():
    prompt = synthesizer_prompt(CAPTION, "mllama")
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>Describe the image.<|eot_id|>")
    assert prompt.endswith(f"{CAPTION}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")


def test_caption_is_kept_verbatim_including_line_breaks():
    caption = "Dish: Strawberry Waffles\n\nSteps to prepare:\na). Preheat the waffle iron."
    assert f"<|end_header_id|>\n\n{caption}<|eot_id|>" in synthesizer_prompt(caption)


@pytest.mark.parametrize("family", ["llava-llama3", "qwen2-vl", "mllama"])
def test_an_image_placeholder_in_a_caption_stays_text(family):
    """The release sends the caption verbatim: "<image>" in it is text, not a second image."""
    caption = " Line one.\nLine two with <image> inside. "
    prompt = synthesizer_prompt(caption, family)
    image_token = {"llava-llama3": "<|reserved_special_token_4|>", "qwen2-vl": "<|image_pad|>",
                   "mllama": "<|image|>"}[family]
    assert prompt.count(image_token) == 1 and prompt.count("<image>") == 1
    assert caption in prompt


def test_messages_are_the_caption_exchange_with_an_image_placeholder():
    assert synthesizer_messages("A plate of pasta.") == [
        {"role": "user", "content": "<image>\nDescribe the image."},
        {"role": "assistant", "content": "A plate of pasta."},
    ]


def test_synthesis_stops_only_at_the_end_of_the_document():
    assert synthesizer_stop() == ("<|end_of_text|>",)
    assert synthesizer_stop("qwen2-vl") == ("<|endoftext|>",)
    assert "<|eot_id|>" not in synthesizer_stop("llava-llama3")


def test_hints_and_version_are_the_published_strings():
    assert CAPTION_INSTRUCTION == "Describe the image."
    assert PRECISE_HINT == "Answer with a precise response."
    assert INFORMATIVE_HINT == "Answer with an informative response."
    assert isinstance(PROMPT_VERSION, str) and PROMPT_VERSION
