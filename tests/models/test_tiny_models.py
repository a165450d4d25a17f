"""The tiny offline models (tools/make_tiny_models.py) loaded through engine.models.loading, like real checkpoints.

The models are built once per session into a tmp dir. The slow test serves them with vLLM's CPU build and checks that
its greedy output for the VLM equals transformers' (same weights in float32, same processor, same M-RoPE positions).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, PreTrainedTokenizerBase, Qwen2VLProcessor

from engine.models.loading import ProcessorLoadError, load_model, load_processor

from tests.conftest import load_tool

tiny = load_tool("make_tiny_models")

pytestmark = pytest.mark.timeout(120)

SEED = 0
NEW_TOKENS = 6
IMAGE_TOKENS_PER_112PX_IMAGE = 16
COLOURS = ((220, 30, 30), (30, 200, 30), (30, 30, 220))


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dir) -> dict[str, Path]:
    return {name: tiny_model_dir / name for name in (tiny.VLM_NAME, tiny.TEXT_LLM_NAME)}


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


def hf_vlm_greedy(model, processor, prompt: str, image: Image.Image) -> list[int]:
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


# --- build -------------------------------------------------------------------------------------------------------


def test_build_reports_about_a_million_parameters_for_the_vlm(tmp_path):
    results = {result.name: result for result in tiny.build_all(tmp_path, seed=SEED)}
    assert all(result.built for result in results.values())
    assert 500_000 < results[tiny.VLM_NAME].parameters < 1_500_000
    assert 300_000 < results[tiny.TEXT_LLM_NAME].parameters < 1_000_000
    for result in results.values():
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


def test_same_seed_gives_byte_identical_weights_and_tokenizer_files(tiny_models, tmp_path):
    rebuilt = {result.name: result.path for result in tiny.build_all(tmp_path, seed=SEED)}
    for name, path in tiny_models.items():
        hashes = file_hashes(path)
        assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= hashes.keys()
        assert file_hashes(rebuilt[name]) == hashes, name


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


# --- vLLM (CPU build) ------------------------------------------------------------------------------------------------


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

    engine_kwargs = {
        # The default KV reservation (a share of the NUMA node) fails on small machines.
        "kv_cache_memory_bytes": 64 * 2**20,
        "max_model_len": 512,
        "enforce_eager": True,
        # vLLM downcasts float32 checkpoints to bfloat16 on CPU by default; float32 keeps parity with transformers.
        "dtype": "float32",
    }
    greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
    processor = load_processor(vlm_path)
    prompt = processor.apply_chat_template(image_question(), add_generation_prompt=True)
    images = [square_image(colour) for colour in COLOURS]

    vlm = LLM(model=str(vlm_path), limit_mm_per_prompt={"image": 1, "video": 0}, **engine_kwargs)
    outputs = vlm.generate([{"prompt": prompt, "multi_modal_data": {"image": image}} for image in images], greedy)
    del vlm
    gc.collect()
    vllm_tokens = [list(output.outputs[0].token_ids) for output in outputs]
    assert all(len(tokens) > 0 for tokens in vllm_tokens)
    assert all(len(output.prompt_token_ids) > IMAGE_TOKENS_PER_112PX_IMAGE for output in outputs)
    model = load_model(vlm_path, "image-text-to-text", dtype="float32")
    assert vllm_tokens == [hf_vlm_greedy(model, processor, prompt, image) for image in images]

    judge = LLM(model=str(llm_path), **engine_kwargs)
    (chat_output,) = judge.chat([judge_question()], greedy)
    del judge
    gc.collect()
    assert len(chat_output.outputs[0].token_ids) > 0
