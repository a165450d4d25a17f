"""The inference backends against the tiny random-weight models (transformers, vLLM's CPU build).

A random model's text means nothing, so the tests check what must hold whatever the weights: batching does not change
greedy outputs, a bad request fails alone, stop strings cut where they should, and vLLM and transformers agree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.config import EngineConfig
from engine.models.backends import GenerationRequest, GenerationResult, create_backend
from engine.models.backends.base import describe_error, forced_length, run_isolating_failures, with_output_length
from engine.models.families import render
from engine.models.loading import load_processor

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_TOKENS = 16
QUESTIONS = ("What colour is the shape?", "Describe the image.", "Is there a circle in the picture?")
# Different sizes give different numbers of image tokens, so the batch needs padding.
IMAGE_SIZES = ((112, 112), (140, 84), (56, 56))
AGREEMENT_TOKENS = 5


def engine_config(model: Path | str, family: str, backend: str, **fields) -> EngineConfig:
    # The tiny processor's own image bounds (a 112 px image = 16 tokens), as the tests below count them.
    fields = {"min_pixels": None, "max_pixels": None, **fields}
    return EngineConfig(model=str(model), family=family, backend=backend, device="cpu", dtype="float32", **fields)


def vlm_prompt(question: str) -> str:
    return render("qwen2-vl", [{"role": "user", "content": f"<image>\n{question}"}], add_generation_prompt=True)


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def image_requests() -> list[GenerationRequest]:
    return [
        GenerationRequest(
            prompt=vlm_prompt(question),
            images=[noise_image(size, seed)],
            max_tokens=MAX_TOKENS,
            keep_special_tokens=True,
        )
        for seed, (question, size) in enumerate(zip(QUESTIONS, IMAGE_SIZES, strict=True))
    ]


def truncated_jpeg() -> Image.Image:
    """An image whose header decodes and whose pixels do not: it fails inside the engine, not when opened."""
    buffer = io.BytesIO()
    noise_image((128, 128), 7).save(buffer, format="JPEG")
    data = buffer.getvalue()
    return Image.open(io.BytesIO(data[: len(data) // 2]))


def assert_all_ok(results: list[GenerationResult], count: int) -> None:
    assert len(results) == count
    for result in results:
        assert result.error is None, result.error
        assert isinstance(result.text, str)
        assert result.prompt_tokens > 0
        assert 0 < result.output_tokens <= MAX_TOKENS


# isolation of failed requests, with a fake engine


def test_a_failing_request_is_isolated_and_the_rest_stay_batched():
    calls: list[list[str]] = []

    def run_batch(batch):
        calls.append([request.prompt for request in batch])
        if any(request.prompt.startswith("bad") for request in batch):
            raise OSError("image file is truncated")
        return [GenerationResult(text=request.prompt.upper(), output_tokens=1) for request in batch]

    prompts = ["a", "b", "bad c", "d", "e", "f", "bad g", "h"]
    results = run_isolating_failures([GenerationRequest(prompt) for prompt in prompts], run_batch)
    assert [result.text for result in results] == ["A", "B", None, "D", "E", "F", None, "H"]
    assert results[2].error == results[6].error == "OSError: image file is truncated"
    succeeded = [prompt for call in calls if not any(p.startswith("bad") for p in call) for prompt in call]
    assert sorted(succeeded) == ["a", "b", "d", "e", "f", "h"]  # each good request generated exactly once
    # 8 fails; each half of 4 holds a bad request: 4 fails, 2 succeeds, 2 fails, 1 fails, 1 succeeds.
    assert [len(call) for call in calls] == [8, 4, 2, 2, 1, 1, 4, 2, 2, 1, 1]


def test_forced_lengths_are_drawn_from_the_key_in_the_stated_shares():
    keys = [f"pair-{index:05d}" for index in range(6000)]
    uniform = [forced_length("uniform_32_512", key, 512) for key in keys]
    assert min(uniform) == 32 and max(uniform) == 512
    assert abs(sum(uniform) / len(uniform) - 272) < 6  # the mean of 32..512; its standard error is about 1.8
    tail = [forced_length("long_tail", key, 1024) for key in keys]
    shares = [sum(low <= length <= high for length in tail) / len(tail) for low, high in ((1, 16), (17, 128),
                                                                                       (129, 1024))]
    for share, expected in zip(shares, (0.80, 0.15, 0.05), strict=True):
        assert abs(share - expected) < 4 * (expected * (1 - expected) / len(tail)) ** 0.5
    # Stable across calls (and processes: no salted hash), capped at the budget, absent when the model decides.
    assert [forced_length("long_tail", key, 1024) for key in keys[:50]] == tail[:50]
    assert forced_length("uniform_32_512", keys[0], 20) <= 20
    assert forced_length("max_tokens", keys[0], 20) == 20
    assert forced_length("natural", keys[0], 20) is None


def test_a_forced_request_cannot_end_early():
    request = GenerationRequest("A plate of", max_tokens=512, stop=["."], key="pair-00001")
    forced = with_output_length(request, "uniform_32_512")
    length = forced_length("uniform_32_512", "pair-00001", 512)
    assert (forced.max_tokens, forced.min_tokens, forced.stop) == (length, length, None)
    assert with_output_length(request, "natural") is request


def test_a_failure_reason_names_the_root_cause_an_engine_wrapped():
    try:
        try:
            raise OSError("image file is truncated")
        except OSError as cause:
            raise ValueError("Failed to apply the processor") from cause
    except ValueError as error:
        wrapped = error
    assert describe_error(wrapped) == "ValueError: Failed to apply the processor; caused by OSError: image file is truncated"
    assert describe_error(KeyError()) == "KeyError"


# transformers


@pytest.fixture(scope="module")
def hf_vlm(tiny_model_dir):
    with create_backend(engine_config(tiny_model_dir / "tiny-qwen2-vl", "qwen2-vl", "transformers")) as backend:
        yield backend


@pytest.fixture(scope="module")
def hf_text(tiny_model_dir):
    with create_backend(engine_config(tiny_model_dir / "tiny-text-llm", "text", "transformers")) as backend:
        yield backend


@pytest.fixture(scope="module")
def hf_image_results(hf_vlm) -> list[GenerationResult]:
    return hf_vlm.generate(image_requests())


def test_transformers_generates_for_an_image_batch(hf_vlm, hf_image_results):
    assert_all_ok(hf_image_results, 3)
    # A 112 px image is 16 image tokens; the smaller ones fewer: the processor expanded each image.
    assert hf_image_results[0].prompt_tokens > hf_image_results[2].prompt_tokens
    # Left padding: each row of the batch continues exactly as it does alone.
    alone = [hf_vlm.generate([request])[0] for request in image_requests()]
    assert [result.text for result in alone] == [result.text for result in hf_image_results]
    assert [result.prompt_tokens for result in alone] == [result.prompt_tokens for result in hf_image_results]


def test_transformers_bad_image_fails_alone(hf_vlm, hf_image_results):
    requests = image_requests()
    requests[1] = GenerationRequest(requests[1].prompt, [truncated_jpeg()], MAX_TOKENS, keep_special_tokens=True)
    results = hf_vlm.generate(requests)
    assert results[1].text is None
    assert "truncated" in results[1].error
    assert [results[0].text, results[2].text] == [hf_image_results[0].text, hf_image_results[2].text]


def test_transformers_text_llm_batch_stop_and_sampling(hf_text):
    prompts = ["Describe the image.", "Question: What colour is the circle? Answer:", "A plate of"]
    results = hf_text.generate([GenerationRequest(prompt, max_tokens=MAX_TOKENS) for prompt in prompts])
    assert_all_ok(results, 3)
    # A stop string taken from the greedy output itself must cut the text right before its first occurrence.
    text = results[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    (stopped,) = hf_text.generate([GenerationRequest(prompts[0], max_tokens=MAX_TOKENS, stop=[stop])])
    assert stopped.text == text[: text.index(stop)]
    assert stopped.output_tokens < results[0].output_tokens
    (sampled,) = hf_text.generate([GenerationRequest(prompts[0], max_tokens=MAX_TOKENS, temperature=1.0)])
    assert sampled.error is None


def test_transformers_stop_at_eos_false_writes_past_the_end_of_sequence_tokens(hf_text, monkeypatch):
    # Make the model's first greedy token an end-of-sequence token: a default request then ends at once, while a
    # synthesizer-style request (stop_at_eos False) goes on to its stop string or its budget.
    (free,) = hf_text.generate([GenerationRequest("A plate of", max_tokens=MAX_TOKENS)])
    prompt_length = len(hf_text._tokenizer("A plate of")["input_ids"])
    first = hf_text._tokenizer("A plate of" + free.text)["input_ids"][prompt_length]
    monkeypatch.setattr(hf_text, "_eos_ids", hf_text._eos_ids | {first})
    monkeypatch.setattr(hf_text._model.generation_config, "eos_token_id", sorted(hf_text._eos_ids))
    (ended,) = hf_text.generate([GenerationRequest("A plate of", max_tokens=MAX_TOKENS)])
    (continued,) = hf_text.generate([GenerationRequest("A plate of", max_tokens=MAX_TOKENS, stop_at_eos=False,
                                                       stop=["<|endoftext|>"])])
    assert (ended.text, ended.output_tokens) == ("", 1)
    assert continued.output_tokens > 1
    assert continued.text.startswith(hf_text._tokenizer.decode([first]))


def test_transformers_text_model_refuses_images(hf_text):
    with_image = GenerationRequest("Describe the image.", [noise_image((56, 56), 0)], max_tokens=MAX_TOKENS)
    results = hf_text.generate([with_image, GenerationRequest("A", max_tokens=MAX_TOKENS)])
    assert "text-only model" in results[0].error
    assert results[1].error is None


# vLLM (CPU build)


@pytest.fixture(scope="module")
def vllm_vlm(tiny_model_dir):
    """One in-process vLLM engine for the module (a 2-core machine must never run two at once), leaving no trace.

    An engine freezes ``vllm.envs`` when it starts and writes variables of its own into ``os.environ``; both are undone
    on either side, so this engine sees the variable set here and later tests see their own environment.
    """
    envs = pytest.importorskip("vllm.envs")
    saved_environ = dict(os.environ)
    # In this process (the CPU build's fast start), not in an engine-core worker process.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    envs.disable_envs_cache()
    config = engine_config(tiny_model_dir / "tiny-qwen2-vl", "qwen2-vl", "vllm", kv_cache_gib=0.0625, max_model_len=512)
    try:
        with create_backend(config) as backend:
            yield backend
    finally:
        envs.disable_envs_cache()
        os.environ.clear()
        os.environ.update(saved_environ)


def leading_tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"][:AGREEMENT_TOKENS]


BIND_PROBE = """
import json, os, threading
import torch
from engine.models.backends.vllm_backend import bind_to_cores

threading.Thread(target=threading.Event().wait, daemon=True).start()  # started before the binding
bind_to_cores("0")
later = []
thread = threading.Thread(target=lambda: later.append(sorted(os.sched_getaffinity(0))))
thread.start()
thread.join()
masks = [sorted(os.sched_getaffinity(int(tid))) for tid in os.listdir("/proc/self/task")]
try:
    bind_to_cores("4096")
    refused = None
except ValueError as err:
    refused = str(err)
print(json.dumps({"masks": masks, "later": later, "torch_threads": torch.get_num_threads(), "refused": refused}))
"""


def test_cpu_threads_bind_pins_every_thread_and_sizes_torch():
    # In a child process: pinning is process-wide and would hold for the rest of the suite.
    result = json.loads(subprocess.run([sys.executable, "-c", BIND_PROBE], capture_output=True, text=True,
                                       check=True).stdout.splitlines()[-1])
    assert result["masks"] and all(mask == [0] for mask in result["masks"])
    assert result["later"] == [[0]]
    assert result["torch_threads"] == 1
    assert "cpu_threads_bind '4096'" in result["refused"] and "this process may use [0]" in result["refused"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_vllm_agrees_with_transformers(vllm_vlm, hf_vlm, hf_image_results, tiny_model_dir, record_property):
    text_only = GenerationRequest("Describe the image.", max_tokens=MAX_TOKENS, keep_special_tokens=True)
    vllm_results = vllm_vlm.generate([*image_requests(), text_only])
    hf_results = [*hf_image_results, hf_vlm.generate([text_only])[0]]
    assert_all_ok(vllm_results, 4)
    tokenizer = load_processor(tiny_model_dir / "tiny-qwen2-vl").tokenizer
    identical = sum(v.text == h.text for v, h in zip(vllm_results, hf_results, strict=True))
    leading = sum(
        leading_tokens(tokenizer, v.text) == leading_tokens(tokenizer, h.text)
        for v, h in zip(vllm_results, hf_results, strict=True)
    )
    record_property("vllm_transformers_identical_texts", f"{identical}/4")
    record_property(f"vllm_transformers_first_{AGREEMENT_TOKENS}_tokens", f"{leading}/4")
    print(f"vLLM vs transformers (greedy, fp32): {identical}/4 identical texts, {leading}/4 agree on the first "
          f"{AGREEMENT_TOKENS} tokens")
    assert leading >= 3
    assert [v.prompt_tokens for v in vllm_results] == [h.prompt_tokens for h in hf_results]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_vllm_bad_requests_fail_alone(vllm_vlm):
    clean = vllm_vlm.generate(image_requests())
    requests = image_requests()
    requests[1] = GenerationRequest(requests[1].prompt, [truncated_jpeg()], MAX_TOKENS, keep_special_tokens=True)
    too_long = GenerationRequest("colour " * 600, max_tokens=MAX_TOKENS)  # max_model_len is 512
    results = vllm_vlm.generate([*requests, too_long])
    assert results[1].text is None
    assert "truncated" in results[1].error
    assert "maximum context length" in results[3].error
    assert [results[0].text, results[2].text] == [clean[0].text, clean[2].text]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_vllm_batches_awaited_together_share_the_engine_and_fail_alone(vllm_vlm):
    """Three batches awaited at once are all inside the engine's scheduler together, and a request that cannot run
    fails alone, in whichever batch it came."""
    batches = [[dataclasses.replace(request, max_tokens=32, min_tokens=32) for request in image_requests()]
               for _ in range(3)]
    batches[1][0] = GenerationRequest(batches[1][0].prompt, [truncated_jpeg()], 32, keep_special_tokens=True)
    engine = vllm_vlm._llm.llm_engine
    peak = 0

    async def watch(done: asyncio.Event) -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, engine.get_num_unfinished_requests())
            await asyncio.sleep(0.005)

    async def run() -> list[list[GenerationResult]]:
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        results = await asyncio.gather(*(vllm_vlm.agenerate(batch) for batch in batches))
        done.set()
        await watcher
        return results

    results = asyncio.run(run())
    assert peak > len(batches[0])  # more than one batch's requests at once
    assert "truncated" in results[1][0].error
    assert [result.output_tokens for batch in results for result in batch if result.ok] == [32] * 8


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_vllm_stop_at_eos_false_ignores_the_end_of_sequence_tokens(vllm_vlm):
    assert vllm_vlm._sampling_params(GenerationRequest("A", stop_at_eos=False)).ignore_eos
    assert not vllm_vlm._sampling_params(GenerationRequest("A")).ignore_eos


def test_vllm_stop_string(vllm_vlm):
    (free,) = vllm_vlm.generate([GenerationRequest("A plate of", max_tokens=MAX_TOKENS)])
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 2]
    (stopped,) = vllm_vlm.generate([GenerationRequest("A plate of", max_tokens=MAX_TOKENS, stop=[stop])])
    assert stopped.text == free.text[: free.text.index(stop)]
