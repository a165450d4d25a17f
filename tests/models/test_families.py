from __future__ import annotations

import dataclasses

import pytest

from engine.models.families import FAMILIES, LLAVA_SYSTEM_PROMPT, ModelFamily, get_family, render

CHAT = [
    {"role": "user", "content": "<image>\nWhat organ is shown?"},
    {"role": "assistant", "content": "The liver."},
    {"role": "user", "content": "Is it enlarged?"},
]


def test_llava_llama3_renders_llama3_headers_with_the_llava_system_prompt():
    expected = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        + LLAVA_SYSTEM_PROMPT
        + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<|reserved_special_token_4|>\nWhat organ is shown?"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nThe liver.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nIs it enlarged?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render("llava-llama3", CHAT, add_generation_prompt=True) == expected


def test_qwen2_vl_renders_chatml_with_vision_tokens_and_default_system():
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What organ is shown?<|im_end|>\n"
        "<|im_start|>assistant\nThe liver.<|im_end|>\n"
        "<|im_start|>user\nIs it enlarged?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render("qwen2-vl", CHAT, add_generation_prompt=True) == expected


def test_mllama_renders_image_token_and_no_default_system():
    expected = (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>What organ is shown?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nThe liver.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nIs it enlarged?<|eot_id|>"
    )
    assert render("mllama", CHAT) == expected


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_an_explicit_system_message_replaces_the_default(name):
    text = render(name, [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}])
    family = FAMILIES[name]
    assert text.count(family.header("system")) == 1
    assert family.header("system") + family.text_prefix + "Be terse." + family.turn_end in text
    assert family.default_system is None or family.default_system not in text


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_open_user_turn_ends_with_an_open_user_header(name):
    family = FAMILIES[name]
    text = render(name, CHAT[:2], open_user_turn=True)
    assert text.endswith(family.turn_end + family.header("user"))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_image_placeholder_becomes_the_family_image_token(name):
    family = FAMILIES[name]
    text = render(name, [{"role": "user", "content": "<image><image>\nCompare the two scans."}])
    assert text.count(family.image_token) == 2
    assert family.image_token == "<image>" or "<image>" not in text


def test_no_flag_leaves_the_last_turn_closed():
    assert render("qwen2-vl", CHAT).endswith("Is it enlarged?<|im_end|>\n")


def test_generation_prompt_and_open_user_turn_are_exclusive():
    with pytest.raises(ValueError, match="exclusive"):
        render("llava-llama3", CHAT, add_generation_prompt=True, open_user_turn=True)


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="role 'tool'"):
        render("mllama", [{"role": "tool", "content": "x"}])


def test_system_message_after_the_first_is_refused():
    with pytest.raises(ValueError, match="only the first"):
        render("mllama", [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}])


def test_get_family_names_the_known_families_on_a_typo():
    with pytest.raises(ValueError, match="llava-llama3, mllama, qwen2-vl"):
        get_family("llava-llama-3")


def test_get_family_accepts_a_custom_family_instance():
    custom = dataclasses.replace(FAMILIES["llava-llama3"], name="llava-hf-llama3", image_token="<image>")
    assert get_family(custom) is custom
    assert "<image>\nWhat organ" in render(custom, CHAT)


def test_stop_strings_are_the_turn_end_and_the_document_end():
    assert FAMILIES["llava-llama3"].stop == ("<|eot_id|>", "<|end_of_text|>")
    assert FAMILIES["qwen2-vl"].stop == ("<|im_end|>", "<|endoftext|>")
    assert FAMILIES["mllama"].stop == ("<|eot_id|>", "<|end_of_text|>")


def test_families_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FAMILIES["qwen2-vl"].image_token = "<image>"  # type: ignore[misc]
    assert isinstance(FAMILIES["qwen2-vl"], ModelFamily)
