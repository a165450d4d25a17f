"""Every family's prompts against the checkpoints' own chat templates, token id for token id.

For each tiny checkpoint (tools/make_tiny_models.py: each carries its real checkpoint's chat template, special tokens
and BOS behaviour), the engine's rendering (engine.models.families.render in the format engine.models.loading.
chat_format reads from the checkpoint, tokenized as every engine tokenizes it: no special tokens added) and the
checkpoint's own `processor.apply_chat_template` must give the same input ids, images expanded, for an evaluation
prompt and a training conversation.

The released synthesizer is the one deliberate exception: its prompt is AdaMLLM's (Open-LLaVA-NeXT's
conv_llava_llama_3, two BOS), not the llava-hf template its hub files ship, because that is the format it was trained
and is run with (engine/synthesis/prompts.py).
"""

from __future__ import annotations

import pytest
from PIL import Image

from engine.config import EngineConfig
from engine.models.families import chat_template_messages, render
from engine.models.loading import chat_format, load_processor, raw_prompt_begin, tokenizer_of
from engine.synthesis.prompts import synthesizer_prompt

IMAGE = Image.new("RGB", (112, 112), (200, 30, 30))
EVALUATION = [{"role": "user", "content": "<image>\nWhat organ is shown in this scan?"}]
TRAINING = [
    {"role": "user", "content": "<image>\nDescribe the image."},
    {"role": "assistant", "content": "A red square on a white field."},
    {"role": "user", "content": "What colour is the square?"},
    {"role": "assistant", "content": "The square is red. Therefore, the answer is red."},
]
CHECKPOINTS = [
    ("llava-hf-llama3", "tiny-llava-next-hf"),
    ("qwen2-vl", "tiny-qwen2-vl"),
    ("qwen2-vl", "tiny-qwen2.5-vl"),
    ("mllama", "tiny-mllama"),
]


def with_images(messages: list[dict]) -> list[dict]:
    """Typed chat-template messages whose image parts carry the image, as apply_chat_template takes them."""
    typed = chat_template_messages(messages)
    for message in typed:
        for part in message["content"]:
            if part["type"] == "image":
                part["image"] = IMAGE
    return typed


@pytest.mark.parametrize(("messages", "generation_prompt"), [(EVALUATION, True), (TRAINING, False)],
                         ids=["evaluation-prompt", "training-conversation"])
@pytest.mark.parametrize(("family", "checkpoint"), CHECKPOINTS, ids=[name for _, name in CHECKPOINTS])
def test_the_engine_renders_what_the_checkpoint_template_renders(tiny_model_dir, family, checkpoint, messages,
                                                                 generation_prompt):
    processor = load_processor(tiny_model_dir / checkpoint)
    text = render(chat_format(family, processor).family, messages, add_generation_prompt=generation_prompt)
    engine = processor(text=[text], images=[[IMAGE]], add_special_tokens=False, return_tensors="pt")
    own = processor.apply_chat_template(with_images(messages), tokenize=True, return_dict=True,
                                        add_generation_prompt=generation_prompt, return_tensors="pt")
    assert engine["input_ids"][0].tolist() == own["input_ids"][0].tolist()
    tokenizer = tokenizer_of(processor)
    bos = tokenizer.bos_token_id
    assert engine["input_ids"][0].tolist().count(bos) == (1 if bos is not None else 0)  # exactly one BOS, or none


@pytest.mark.parametrize(("family", "checkpoint", "stops"), [
    ("llava-hf-llama3", "tiny-llava-next-hf", ("<|eot_id|>", "<|end_of_text|>")),
    ("qwen2-vl", "tiny-qwen2.5-vl", ("<|im_end|>", "<|endoftext|>")),
    ("mllama", "tiny-mllama", ("<|eot_id|>", "<|end_of_text|>")),
])
def test_answers_stop_on_token_ids(tiny_model_dir, family, checkpoint, stops):
    processor = load_processor(tiny_model_dir / checkpoint)
    assert chat_format(family, processor).stop_token_ids == tuple(
        tokenizer_of(processor).convert_tokens_to_ids(token) for token in stops)


def test_the_released_synthesizer_prompt_keeps_its_two_bos_and_its_image_token(tiny_model_dir):
    processor = load_processor(tiny_model_dir / "tiny-llava-next-synthesizer")
    family = chat_format("llava-llama3", processor).family
    assert family.image_token == "<|reserved_special_token_4|>" == processor.image_token
    inputs = processor(text=[synthesizer_prompt("A red square.", family)], images=[[IMAGE]],
                       add_special_tokens=False, return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    tokenizer = tokenizer_of(processor)
    assert ids[:3] == [tokenizer.bos_token_id, tokenizer.bos_token_id,
                       tokenizer.convert_tokens_to_ids("<|start_header_id|>")]
    image_id = tokenizer.convert_tokens_to_ids("<|reserved_special_token_4|>")
    assert ids.count(image_id) == 88  # LLaVA-NeXT anyres: the whole image, 2x2 tiles and row ends


def test_a_llava_llama3_checkpoint_in_the_llava_hf_layout_gets_its_image_token(tiny_model_dir):
    # The Open-LLaVA-NeXT format on a checkpoint whose processor expands <image>: the format keeps its text and
    # writes the processor's token, so a prompt never reaches vLLM with a token it cannot expand.
    processor = load_processor(tiny_model_dir / "tiny-llava-next-hf")
    family = chat_format("llava-llama3", processor).family
    assert family.image_token == "<image>"
    ids = processor(text=[render(family, EVALUATION, add_generation_prompt=True)], images=[[IMAGE]],
                    add_special_tokens=False)["input_ids"][0]
    assert ids.count(tokenizer_of(processor).convert_tokens_to_ids("<image>")) == 88


@pytest.mark.parametrize(("checkpoint", "begin"), [("tiny-llama3-text", "<|begin_of_text|>"), ("tiny-text-llm", "")])
def test_a_raw_prompt_starts_with_the_bos_the_tokenizer_would_add(tiny_model_dir, checkpoint, begin):
    engine = EngineConfig(model=str(tiny_model_dir / checkpoint), family="text", backend="transformers", device="cpu")
    assert raw_prompt_begin(engine) == begin


def test_a_family_the_checkpoint_cannot_speak_is_refused_naming_the_tokens(tiny_model_dir):
    processor = load_processor(tiny_model_dir / "tiny-mllama")
    with pytest.raises(ValueError, match=r"no <\|endoftext\|>, <\|im_end\|>, <\|im_start\|>, which the 'qwen2-vl'"):
        chat_format("qwen2-vl", processor)
