"""The tiny offline models (tools/make_tiny_models.py) loaded through engine.models.loading, like real checkpoints.

The models are built once per session into a tmp dir. Each must look like the checkpoint it stands in for: its
processor and model classes, image token and its expansion, special tokens, BOS behaviour, chat template and stop ids.
The slow tests serve the models vLLM supports (all but Mllama) with vLLM's CPU build and check that its greedy output
equals transformers' (same weights in float32, same processor, same positions).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import (
    AutoProcessor,
    GenerationConfig,
    LlamaForCausalLM,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    MllamaForConditionalGeneration,
    MllamaProcessor,
    PreTrainedTokenizerBase,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
)

from engine.models.loading import ProcessorLoadError, load_model, load_processor

from tests.conftest import load_tool

tiny = load_tool("make_tiny_models")

pytestmark = pytest.mark.timeout(120)

SEED = 0
NEW_TOKENS = 6
IMAGE_TOKENS_PER_112PX_IMAGE = 16
COLOURS = ((220, 30, 30), (30, 200, 30), (30, 30, 220))
MAX_PARAMETERS = 1_000_000


@dataclass(frozen=True)
class ImageTextModel:
    """What a tiny image-text model must look like: the classes, image token and image cost of its checkpoint."""

    processor_class: type
    model_class: type
    image_token: str
    image_tokens_per_112px_image: int
    # Mllama's chat template writes <|begin_of_text|> itself: its text is then tokenized without special tokens.
    template_writes_bos: bool = False
    served_by_vllm: bool = True


# The models added next to tiny-qwen2-vl, whose own tests come first below.
IMAGE_TEXT_MODELS = {
    tiny.QWEN2_5_VL_NAME: ImageTextModel(Qwen2_5_VLProcessor, Qwen2_5_VLForConditionalGeneration, tiny.IMAGE_PAD, 16),
    # 2x2 tiles of 4x4 patches, the whole image downscaled to one tile (16), and a row-end token per grid row (8).
    tiny.LLAVA_NEXT_NAME: ImageTextModel(LlavaNextProcessor, LlavaNextForConditionalGeneration, "<image>", 88),
    tiny.SYNTHESIZER_NAME: ImageTextModel(
        LlavaNextProcessor, LlavaNextForConditionalGeneration, "<|reserved_special_token_4|>", 88
    ),
    # One <|image|> per image: the text reads the tiles through cross-attention.
    tiny.MLLAMA_NAME: ImageTextModel(
        MllamaProcessor, MllamaForConditionalGeneration, "<|image|>", 1, template_writes_bos=True, served_by_vllm=False
    ),
}
VLLM_IMAGE_TEXT_MODELS = [name for name, model in IMAGE_TEXT_MODELS.items() if model.served_by_vllm]
LLAMA3_MODELS = {
    tiny.LLAVA_NEXT_NAME: tiny.LLAVA_NEXT_HF,
    tiny.SYNTHESIZER_NAME: tiny.SYNTHESIZER,
    tiny.MLLAMA_NAME: tiny.LLAMA3_2_VISION_INSTRUCT,
    tiny.LLAMA3_TEXT_NAME: tiny.META_LLAMA3_8B,
}
QWEN_MODELS = [tiny.VLM_NAME, tiny.TEXT_LLM_NAME, tiny.QWEN2_5_VL_NAME]


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dir) -> dict[str, Path]:
    return {model.name: tiny_model_dir / model.name for model in tiny.TINY_MODELS}


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> dict:
    """A second build of every model from the same seed, into its own folder."""
    out = tmp_path_factory.mktemp("rebuilt")
    return {result.name: result for result in tiny.build_all(out, seed=SEED)}


@pytest.fixture(scope="session")
def vlm_path(tiny_models) -> Path:
    return tiny_models[tiny.VLM_NAME]


@pytest.fixture(scope="session")
def llm_path(tiny_models) -> Path:
    return tiny_models[tiny.TEXT_LLM_NAME]


def square_image(colour: tuple[int, int, int], size: int = 112) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    image.paste(colour, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return image


def image_question(text: str = "What colour is the square?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def judge_question() -> list[dict]:
    return [{"role": "user", "content": "Caption: a red square. Answer: blue. Is the answer consistent? Yes or No."}]


def file_hashes(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def hf_vlm_greedy(model, processor, prompt: str, image: Image.Image, **text_kwargs) -> list[int]:
    inputs = processor(text=[prompt], images=[image], return_tensors="pt", **text_kwargs)
    return hf_greedy(model, inputs)


def hf_greedy(model, inputs) -> list[int]:
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def image_prompt(name: str, processor) -> str:
    """The chat template's prompt for one image and a question. The synthesizer's template is llava-hf's, which writes
    <image>: its prompt carries its own image token there instead, as AdaMLLM's prompts do."""
    prompt = processor.apply_chat_template(image_question(), add_generation_prompt=True)
    if name == tiny.SYNTHESIZER_NAME:
        return prompt.replace(tiny.LLAVA_IMAGE_TOKEN, processor.image_token)
    return prompt


def text_kwargs(name: str) -> dict:
    """A prompt whose template wrote the BOS is tokenized without adding another, as Llama-3.2-Vision's card does."""
    return {"add_special_tokens": False} if IMAGE_TEXT_MODELS[name].template_writes_bos else {}


def image_inputs(name: str, processor, colour: tuple[int, int, int] = COLOURS[0]):
    return processor(
        text=[image_prompt(name, processor)], images=[square_image(colour)], return_tensors="pt", **text_kwargs(name)
    )


def tokenizer_at(path: Path) -> PreTrainedTokenizerBase:
    processor = load_processor(path)
    return getattr(processor, "tokenizer", processor)


def weight_names(path: Path) -> list[str]:
    with safe_open(path / "model.safetensors", "pt") as weights:
        return list(weights.keys())


# --- build -------------------------------------------------------------------------------------------------------


def test_build_reports_at_most_a_million_parameters_per_model(rebuilt):
    assert set(rebuilt) == {model.name for model in tiny.TINY_MODELS}
    assert all(result.built for result in rebuilt.values())
    for result in rebuilt.values():
        assert 300_000 < result.parameters <= MAX_PARAMETERS, result.name
        card = (result.path / "README.md").read_text()
        assert "RANDOM WEIGHTS" in card and f"--seed {SEED}" in card


def test_rebuild_is_skipped_when_the_stamp_matches_and_forced_otherwise(tiny_models, tmp_path):
    copy = tmp_path / tiny.VLM_NAME
    shutil.copytree(tiny_models[tiny.VLM_NAME], copy)
    vlm = tiny.TINY_MODELS[0]
    assert not tiny.build_model(vlm, tmp_path, SEED).built
    assert tiny.build_model(vlm, tmp_path, SEED, force=True).built
    (copy / tiny.STAMP_FILE).write_text('{"build": {"seed": 1}}')
    assert tiny.build_model(vlm, tmp_path, SEED).built


def test_same_seed_gives_byte_identical_weights_and_tokenizer_files(tiny_models, rebuilt):
    for name, path in tiny_models.items():
        hashes = file_hashes(path)
        assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= hashes.keys()
        assert file_hashes(rebuilt[name].path) == hashes, name


def test_another_seed_gives_other_weights(vlm_path, tmp_path):
    other = tiny.build_model(tiny.TINY_MODELS[0], tmp_path, seed=SEED + 1).path
    assert file_hashes(other)["model.safetensors"] != file_hashes(vlm_path)["model.safetensors"]


# --- load and run with transformers --------------------------------------------------------------------------------


def test_vlm_processor_loads_as_a_full_qwen2_vl_processor(vlm_path):
    processor = load_processor(vlm_path)
    assert isinstance(processor, Qwen2VLProcessor)
    assert processor.video_processor is not None
    assert len(processor.tokenizer) == load_model(vlm_path, "image-text-to-text").config.text_config.vocab_size


def test_vlm_config_ids_match_the_tokenizer(vlm_path):
    tokenizer = load_processor(vlm_path).tokenizer
    config = load_model(vlm_path, "image-text-to-text").config
    assert config.image_token_id == tokenizer.convert_tokens_to_ids(tiny.IMAGE_PAD)
    assert config.video_token_id == tokenizer.convert_tokens_to_ids(tiny.VIDEO_PAD)
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids(tiny.VISION_START)
    assert config.vision_end_token_id == tokenizer.convert_tokens_to_ids(tiny.VISION_END)
    assert tokenizer.eos_token == tiny.IM_END and tokenizer.pad_token == tiny.ENDOFTEXT


def test_vlm_chat_template_renders_images_like_qwen2_vl(vlm_path):
    prompt = load_processor(vlm_path).apply_chat_template(image_question("Hi"), add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_a_112px_image_becomes_16_image_tokens_with_mm_token_type_ids(vlm_path):
    processor = load_processor(vlm_path)
    prompt = processor.apply_chat_template(image_question(), add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[square_image(COLOURS[0])], return_tensors="pt")
    image_token_id = processor.tokenizer.convert_tokens_to_ids(tiny.IMAGE_PAD)
    assert int((inputs["input_ids"] == image_token_id).sum()) == IMAGE_TOKENS_PER_112PX_IMAGE
    # transformers 5 needs these to compute M-RoPE positions for the image tokens.
    assert int((inputs["mm_token_type_ids"] == 1).sum()) == IMAGE_TOKENS_PER_112PX_IMAGE
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]


def test_vlm_generates_greedily_from_an_image(vlm_path):
    processor = load_processor(vlm_path)
    model = load_model(vlm_path, "image-text-to-text", dtype="float32")
    prompt = processor.apply_chat_template(image_question(), add_generation_prompt=True)
    new_tokens = hf_vlm_greedy(model, processor, prompt, square_image(COLOURS[0]))
    assert len(new_tokens) == NEW_TOKENS
    assert new_tokens == hf_vlm_greedy(model, processor, prompt, square_image(COLOURS[0]))
    assert isinstance(processor.decode(new_tokens, skip_special_tokens=True), str)


def test_text_llm_generates_greedily_from_a_chat(llm_path):
    tokenizer = load_processor(llm_path)
    model = load_model(llm_path, "causal-lm")
    prompt = tokenizer.apply_chat_template(judge_question(), add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS


def test_load_model_honours_dtype_and_rejects_unknown_kinds(llm_path):
    assert load_model(llm_path, "causal-lm", dtype="bfloat16").dtype == torch.bfloat16
    assert load_model(llm_path, "causal-lm").dtype == torch.float32
    with pytest.raises(ValueError, match="unknown model kind"):
        load_model(llm_path, "seq2seq")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(llm_path, "causal-lm", dtype="float8")  # type: ignore[arg-type]


def test_an_unregistered_processor_class_is_an_error_not_a_silent_tokenizer(vlm_path, tmp_path):
    checkpoint = shutil.copytree(vlm_path, tmp_path / "custom-processor")
    processor_config = checkpoint / "processor_config.json"
    saved = json.loads(processor_config.read_text())
    processor_config.write_text(json.dumps(saved | {"processor_class": "UnregisteredImageOnlyProcessor"}))
    # The transformers behaviour this guards against: the class name is unknown, so only the tokenizer comes back.
    assert isinstance(AutoProcessor.from_pretrained(checkpoint), PreTrainedTokenizerBase)
    with pytest.raises(ProcessorLoadError, match="returned only its tokenizer"):
        load_processor(checkpoint)


# --- the other checkpoints' layouts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGE_TEXT_MODELS)
def test_image_text_models_load_as_their_checkpoint_s_processor_and_model(tiny_models, name):
    expected = IMAGE_TEXT_MODELS[name]
    processor = load_processor(tiny_models[name])
    model = load_model(tiny_models[name], "image-text-to-text")
    assert type(processor) is expected.processor_class
    assert type(model) is expected.model_class
    assert processor.image_token == expected.image_token
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids(expected.image_token)
    # Every id the model can write decodes.
    assert model.get_output_embeddings().out_features <= len(processor.tokenizer)


@pytest.mark.parametrize("name", IMAGE_TEXT_MODELS)
def test_a_112px_image_becomes_the_checkpoint_s_number_of_image_tokens(tiny_models, name):
    processor = load_processor(tiny_models[name])
    image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TEXT_MODELS[name].image_token)
    input_ids = image_inputs(name, processor)["input_ids"]
    assert int((input_ids == image_token_id).sum()) == IMAGE_TEXT_MODELS[name].image_tokens_per_112px_image


def test_llava_next_grid_pinpoints_make_a_wide_image_cost_more_tiles(tiny_models):
    """A 224x112 image fits the 112x56 pinpoint: 2 tiles plus the downscaled whole, which cost 16 base tokens, a grid
    of 4 rows of 8 patches and 4 row ends."""
    processor = load_processor(tiny_models[tiny.LLAVA_NEXT_NAME])
    prompt = processor.apply_chat_template(image_question(), add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[Image.new("RGB", (224, 112))], return_tensors="pt")
    assert inputs["pixel_values"].shape[1] == 3
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 16 + 4 * 8 + 4


@pytest.mark.parametrize("name", LLAMA3_MODELS)
def test_llama3_tokenizers_append_the_checkpoint_s_special_tokens_in_its_order(tiny_models, name):
    checkpoint = LLAMA3_MODELS[name]
    tokenizer = tokenizer_at(tiny_models[name])
    tokens = checkpoint.special_tokens + checkpoint.added_tokens
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    assert ids == list(range(tiny.BPE_VOCAB_SIZE, len(tokenizer)))
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|begin_of_text|>", checkpoint.eos_token, checkpoint.pad_token
    )
    # Every special token decodes back to itself, and is dropped when special tokens are skipped.
    assert tokenizer.decode(ids) == "".join(tokens)
    assert tokenizer.decode(ids, skip_special_tokens=True) == ""


def test_special_token_ids_sit_where_the_real_checkpoints_have_them(tiny_models):
    """Spot checks against the real tokenizers: ids relative to <|begin_of_text|> (128000 there)."""

    def offset(name: str, token: str) -> int:
        tokenizer = tokenizer_at(tiny_models[name])
        return tokenizer.convert_tokens_to_ids(token) - tokenizer.bos_token_id

    assert offset(tiny.SYNTHESIZER_NAME, "<|reserved_special_token_4|>") == 128008 - 128000
    assert offset(tiny.LLAVA_NEXT_NAME, "<|eot_id|>") == 128009 - 128000
    assert offset(tiny.MLLAMA_NAME, "<|eom_id|>") == 128008 - 128000
    assert offset(tiny.MLLAMA_NAME, "<|finetune_right_pad_id|>") == 128004 - 128000
    assert offset(tiny.LLAMA3_TEXT_NAME, "<|end_of_text|>") == 128001 - 128000


@pytest.mark.parametrize("name", LLAMA3_MODELS)
def test_llama3_tokenizers_prepend_exactly_one_bos_when_adding_special_tokens(tiny_models, name):
    tokenizer = tokenizer_at(tiny_models[name])
    with_bos = tokenizer("What colour is the square?").input_ids
    without = tokenizer("What colour is the square?", add_special_tokens=False).input_ids
    assert with_bos == [tokenizer.bos_token_id] + without
    assert tokenizer.bos_token_id not in without
    assert tokenizer.decode(with_bos) == "<|begin_of_text|>What colour is the square?"


@pytest.mark.parametrize("name", QWEN_MODELS)
def test_qwen_tokenizers_add_no_bos(tiny_models, name):
    tokenizer = tokenizer_at(tiny_models[name])
    assert tokenizer.bos_token is None
    assert tokenizer("What colour?").input_ids == tokenizer("What colour?", add_special_tokens=False).input_ids


@pytest.mark.parametrize("name", [tiny.LLAVA_NEXT_NAME, tiny.SYNTHESIZER_NAME, tiny.MLLAMA_NAME])
def test_chat_template_prompts_reach_the_model_with_one_bos(tiny_models, name):
    """The LLaVA-NeXT templates leave the BOS to the tokenizer; Mllama's writes it, and is tokenized without adding."""
    processor = load_processor(tiny_models[name])
    input_ids = image_inputs(name, processor)["input_ids"][0].tolist()
    bos_token_id = processor.tokenizer.bos_token_id
    assert input_ids[0] == bos_token_id and input_ids.count(bos_token_id) == 1


LLAVA_LLAMA3_PROMPT = (
    "<|start_header_id|>user<|end_header_id|>\n\n<image>\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
)
CHAT_TEMPLATE_RENDERINGS = {
    tiny.QWEN2_5_VL_NAME: (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n"
    ),
    tiny.LLAVA_NEXT_NAME: LLAVA_LLAMA3_PROMPT,
    # The synthesizer ships llava-hf's template unchanged, <image> included (its image token is another one).
    tiny.SYNTHESIZER_NAME: LLAVA_LLAMA3_PROMPT,
    tiny.MLLAMA_NAME: (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>Hi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
}


@pytest.mark.parametrize("name", CHAT_TEMPLATE_RENDERINGS)
def test_chat_template_renders_an_image_question_like_the_checkpoint(tiny_models, name):
    processor = load_processor(tiny_models[name])
    rendered = processor.apply_chat_template(image_question("Hi"), add_generation_prompt=True)
    assert rendered == CHAT_TEMPLATE_RENDERINGS[name]


def test_mllama_chat_template_adds_a_dated_system_turn_only_without_images(tiny_models):
    processor = load_processor(tiny_models[tiny.MLLAMA_NAME])
    text_only = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    rendered = processor.apply_chat_template(text_only, add_generation_prompt=True, date_string="26 Jul 2024")
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    answered = image_question("Hi") + [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}]
    assert processor.apply_chat_template(answered) == (
        CHAT_TEMPLATE_RENDERINGS[tiny.MLLAMA_NAME] + "Red.<|eot_id|>"
    )


def test_qwen2_5_vl_chat_template_renders_like_qwen2_vl_s(tiny_models):
    qwen2_vl = load_processor(tiny_models[tiny.VLM_NAME])
    qwen2_5_vl = load_processor(tiny_models[tiny.QWEN2_5_VL_NAME])
    assert qwen2_5_vl.chat_template == tiny.QWEN2_5_VL_CHAT_TEMPLATE != qwen2_vl.chat_template
    conversations = [
        [{"role": "user", "content": "Plain text."}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Two?"}]},
            {"role": "assistant", "content": "Yes."},
        ],
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "A video."}]}],
    ]
    for conversation in conversations:
        for options in ({}, {"add_vision_id": True}, {"add_generation_prompt": True}):
            expected = qwen2_vl.apply_chat_template(conversation, **options)
            assert qwen2_5_vl.apply_chat_template(conversation, **options) == expected


def test_the_base_llama3_judge_has_no_chat_template(tiny_models):
    tokenizer = load_processor(tiny_models[tiny.LLAMA3_TEXT_NAME])
    assert tokenizer.chat_template is None
    assert not (tiny_models[tiny.LLAMA3_TEXT_NAME] / "chat_template.jinja").exists()
    with pytest.raises(ValueError):
        tokenizer.apply_chat_template(judge_question(), tokenize=False)


STOP_TOKENS = {
    tiny.LLAVA_NEXT_NAME: ["<|eot_id|>"],
    tiny.SYNTHESIZER_NAME: ["<|end_of_text|>"],
    tiny.MLLAMA_NAME: ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
    tiny.LLAMA3_TEXT_NAME: ["<|end_of_text|>"],
}


@pytest.mark.parametrize("name", STOP_TOKENS)
def test_llama_models_stop_where_the_checkpoint_s_generation_config_does(tiny_models, name):
    tokenizer = tokenizer_at(tiny_models[name])
    eos_token_id = GenerationConfig.from_pretrained(tiny_models[name]).eos_token_id
    stop_ids = eos_token_id if isinstance(eos_token_id, list) else [eos_token_id]
    assert tokenizer.convert_ids_to_tokens(stop_ids) == STOP_TOKENS[name]


LLAVA_HF_WEIGHT_PREFIXES = (
    "vision_tower.vision_model.", "multi_modal_projector.", "image_newline", "language_model.model.",
    "language_model.lm_head.",
)  # fmt: skip


@pytest.mark.parametrize("name", [tiny.LLAVA_NEXT_NAME, tiny.SYNTHESIZER_NAME])
def test_llava_next_weights_have_llava_hf_s_names(tiny_models, name):
    """vLLM loads LLaVA-NeXT weights under llava-hf's names only: the CLIP tower under vision_tower.vision_model."""
    names = weight_names(tiny_models[name])
    assert all(weight.startswith(LLAVA_HF_WEIGHT_PREFIXES) for weight in names)
    assert all(any(weight.startswith(prefix) for weight in names) for prefix in LLAVA_HF_WEIGHT_PREFIXES)
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in names


@pytest.mark.parametrize(
    ("name", "prefixes"),
    [
        (tiny.QWEN2_5_VL_NAME, {"lm_head", "model", "visual"}),
        (tiny.MLLAMA_NAME, {"language_model", "multi_modal_projector", "vision_model"}),
        (tiny.LLAMA3_TEXT_NAME, {"lm_head", "model"}),
    ],
)
def test_other_weights_have_their_checkpoint_s_top_level_names(tiny_models, name, prefixes):
    assert {key.split(".")[0] for key in weight_names(tiny_models[name])} == prefixes


def test_mllama_reads_the_image_through_cross_attention_and_cannot_write_its_image_token(tiny_models):
    path = tiny_models[tiny.MLLAMA_NAME]
    processor = load_processor(path)
    model = load_model(path, "image-text-to-text")
    text_config = model.config.text_config
    assert text_config.cross_attention_layers == tiny.MLLAMA_CROSS_ATTENTION_LAYERS
    layers = model.model.language_model.layers
    assert [type(layers[index]).__name__ for index in text_config.cross_attention_layers] == [
        "MllamaCrossAttentionDecoderLayer"
    ]
    inputs = image_inputs(tiny.MLLAMA_NAME, processor)
    # One tile for a square image, padded to the maximum; the text attends to it from the image token on.
    assert inputs["pixel_values"].shape == (1, 1, tiny.MLLAMA_MAX_TILES, 3, tiny.VISION_TILE, tiny.VISION_TILE)
    assert inputs["cross_attention_mask"][0, :, 0, 0].tolist() == [
        int(position >= inputs["input_ids"][0].tolist().index(processor.image_token_id))
        for position in range(inputs["input_ids"].shape[1])
    ]
    # As in Llama-3.2-Vision, <|image|> is the token just past the output vocabulary; every other token decodes.
    assert model.config.image_token_id == text_config.vocab_size == len(processor.tokenizer) - 1


@pytest.mark.parametrize("name", IMAGE_TEXT_MODELS)
def test_an_image_conversation_with_labels_gives_a_finite_loss(tiny_models, name):
    processor = load_processor(tiny_models[name])
    model = load_model(tiny_models[name], "image-text-to-text", dtype="float32")
    inputs = image_inputs(name, processor)
    # Image tokens are never targets (the training collator masks them too; Mllama could not even score them).
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    with torch.no_grad():
        loss = model(**inputs, labels=labels).loss
    assert math.isfinite(loss.item()) and loss.item() > 0


@pytest.mark.parametrize("name", IMAGE_TEXT_MODELS)
def test_image_text_models_generate_greedily_from_an_image(tiny_models, name):
    processor = load_processor(tiny_models[name])
    model = load_model(tiny_models[name], "image-text-to-text", dtype="float32")
    inputs = image_inputs(name, processor)
    new_tokens = hf_greedy(model, inputs)
    assert 0 < len(new_tokens) <= NEW_TOKENS
    assert new_tokens == hf_greedy(model, inputs)
    assert isinstance(processor.decode(new_tokens, skip_special_tokens=True), str)


def test_the_llama3_judge_scores_and_generates_from_a_few_shot_prompt(tiny_models):
    path = tiny_models[tiny.LLAMA3_TEXT_NAME]
    tokenizer = load_processor(path)
    model = load_model(path, "causal-lm")
    assert type(model) is LlamaForCausalLM and model.config.vocab_size == len(tokenizer)
    inputs = tokenizer("Caption: a red square.\nAnswer: blue.\nConsistent: No\n\nCaption: a ring.\nAnswer:",
                       return_tensors="pt")
    with torch.no_grad():
        loss = model(**inputs, labels=inputs["input_ids"]).loss
    assert math.isfinite(loss.item())
    new_tokens = hf_greedy(model, inputs)
    assert 0 < len(new_tokens) <= NEW_TOKENS and new_tokens == hf_greedy(model, inputs)


# --- vLLM (CPU build) ------------------------------------------------------------------------------------------------


VLLM_ENGINE = {
    # The default KV reservation (a share of the NUMA node) fails on small machines.
    "kv_cache_memory_bytes": 64 * 2**20,
    "max_model_len": 512,
    "enforce_eager": True,
    # vLLM downcasts float32 checkpoints to bfloat16 on CPU by default; float32 keeps parity with transformers.
    "dtype": "float32",
}


@pytest.fixture
def in_process_vllm():
    """vLLM engines in this process (~10 s start-up instead of ~25 s), leaving no trace for later tests.

    An engine writes its own settings into os.environ (e.g. VLLM_WORKER_MULTIPROC_METHOD=spawn) and freezes
    vllm.envs at start-up, so later environment changes would be ignored: both are undone around the test.
    """
    saved_environ = dict(os.environ)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import vllm.envs

    vllm.envs.disable_envs_cache()
    yield
    vllm.envs.disable_envs_cache()
    os.environ.clear()
    os.environ.update(saved_environ)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_vllm_serves_both_tiny_models_and_matches_transformers(vlm_path, llm_path, in_process_vllm):
    from vllm import LLM, SamplingParams

    greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
    processor = load_processor(vlm_path)
    prompt = processor.apply_chat_template(image_question(), add_generation_prompt=True)
    images = [square_image(colour) for colour in COLOURS]

    vlm = LLM(model=str(vlm_path), limit_mm_per_prompt={"image": 1, "video": 0}, **VLLM_ENGINE)
    outputs = vlm.generate([{"prompt": prompt, "multi_modal_data": {"image": image}} for image in images], greedy)
    del vlm
    gc.collect()
    vllm_tokens = [list(output.outputs[0].token_ids) for output in outputs]
    assert all(len(tokens) > 0 for tokens in vllm_tokens)
    assert all(len(output.prompt_token_ids) > IMAGE_TOKENS_PER_112PX_IMAGE for output in outputs)
    model = load_model(vlm_path, "image-text-to-text", dtype="float32")
    assert vllm_tokens == [hf_vlm_greedy(model, processor, prompt, image) for image in images]

    judge = LLM(model=str(llm_path), **VLLM_ENGINE)
    (chat_output,) = judge.chat([judge_question()], greedy)
    del judge
    gc.collect()
    assert len(chat_output.outputs[0].token_ids) > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", VLLM_IMAGE_TEXT_MODELS)
def test_vllm_generates_from_an_image_prompt_like_transformers(tiny_models, name, in_process_vllm):
    from vllm import LLM, SamplingParams

    path = tiny_models[name]
    processor = load_processor(path)
    prompt = image_prompt(name, processor)
    images = [square_image(colour) for colour in COLOURS[:2]]
    limits = {"image": 1, "video": 0} if getattr(processor, "video_processor", None) else {"image": 1}
    engine = LLM(model=str(path), limit_mm_per_prompt=limits, **VLLM_ENGINE)
    greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
    outputs = engine.generate([{"prompt": prompt, "multi_modal_data": {"image": image}} for image in images], greedy)
    del engine
    gc.collect()
    vllm_tokens = [list(output.outputs[0].token_ids) for output in outputs]
    assert all(len(tokens) > 0 for tokens in vllm_tokens)
    image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TEXT_MODELS[name].image_token)
    expected_image_tokens = IMAGE_TEXT_MODELS[name].image_tokens_per_112px_image
    assert all(output.prompt_token_ids.count(image_token_id) == expected_image_tokens for output in outputs)
    model = load_model(path, "image-text-to-text", dtype="float32")
    assert vllm_tokens == [hf_vlm_greedy(model, processor, prompt, image, **text_kwargs(name)) for image in images]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_vllm_serves_the_llama3_judge_like_transformers(tiny_models, in_process_vllm):
    from vllm import LLM, SamplingParams

    path = tiny_models[tiny.LLAMA3_TEXT_NAME]
    prompt = "Caption: a red square.\nAnswer: blue.\nConsistent:"
    engine = LLM(model=str(path), **VLLM_ENGINE)
    (output,) = engine.generate([prompt], SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0))
    del engine
    gc.collect()
    tokenizer = load_processor(path)
    assert output.prompt_token_ids == tokenizer(prompt).input_ids
    model = load_model(path, "causal-lm", dtype="float32")
    assert list(output.outputs[0].token_ids) == hf_greedy(model, tokenizer(prompt, return_tensors="pt"))
