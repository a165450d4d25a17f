"""The family matrix: every model family the recipes use, through every stage, on tiny models of its architecture.

One `adapt run` per family on a few pairs, sharing the session's Ray and the built models: the family's model
synthesizes (the released synthesizer's format for llava-llama3, the family's own format for the others), Ray Train
+ DeepSpeed trains it 2 steps and exports it, transformers reloads the export and generates, and evaluation scores base
and adapted with vLLM's CPU build (transformers for Mllama, which the pinned vLLM cannot run). What only a GPU can
show (bf16, ZeRO-3 across GPUs, real throughput) is listed in the README's family table.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image

from engine.cli import main
from engine.models.families import render
from engine.models.loading import chat_format, load_model, load_processor
from tests.conftest import REPO_ROOT
from tests.fixtures import write_parquet_pairs, write_task_benchmark

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PAIRS, BENCHMARK_ROWS, STEPS = 6, 3, 2
# (family, tiny checkpoint, synthesis prompt format, inference backend)
FAMILIES = [
    ("llava-llama3", "tiny-llava-next-synthesizer", "adamllm", "vllm"),
    ("llava-hf-llama3", "tiny-llava-next-hf", "family", "vllm"),
    ("qwen2-vl", "tiny-qwen2-vl", "family", "vllm"),
    ("qwen2-vl", "tiny-qwen2.5-vl", "family", "vllm"),
    ("mllama", "tiny-mllama", "family", "transformers"),
]


def engine(model: str, family: str, backend: str, max_tokens: int) -> dict:
    settings = {"model": model, "family": family, "backend": backend, "device": "cpu", "num_cpus": 0.5,
                "batch_size": 8, "max_tokens": max_tokens, "dtype": "float32", "min_pixels": None,
                "max_pixels": None}
    if backend == "vllm":
        settings.update(kv_cache_gib=0.0625, enforce_eager=True, max_model_len=1024)
    return settings


@pytest.mark.parametrize(("family", "checkpoint", "prompt_format", "backend"), FAMILIES,
                         ids=[checkpoint for _, checkpoint, _, _ in FAMILIES])
def test_family_through_every_stage(family, checkpoint, prompt_format, backend, ray_cluster, tiny_model_dir,
                                    tmp_path):
    model = str(tiny_model_dir / checkpoint)
    config = {
        "output_dir": str(tmp_path / "run"),
        "data": {"path": str(write_parquet_pairs(tmp_path / "pairs", PAIRS, shards=1)), "format": "parquet"},
        # A random-weight synthesizer writes no task; the release would then drop every pair and leave nothing to
        # train, so its caption examples are kept.
        "synthesis": {"synthesizer": "model", "prompt_format": prompt_format, "keep_pairs_without_task": True,
                      "engine": engine(model, family, backend, max_tokens=24)},
        "filter": {"judge": "lexical"},
        "training": {"model": model, "family": family, "num_workers": 1, "use_gpu": False, "cpus_per_worker": 0.5,
                     "precision": "fp32", "deepspeed_config": str(REPO_ROOT / "configs/deepspeed/zero2.json"),
                     "global_batch_size": 2, "micro_batch_size": 1, "max_steps": STEPS, "max_length": 1024,
                     "min_pixels": None, "max_pixels": None},
        "evaluation": {"benchmarks": [{"task": "demo_vqa", "path": str(write_task_benchmark(
                           "demo_vqa", tmp_path / "benchmarks", BENCHMARK_ROWS))}],
                       "engine": engine(model, family, backend, max_tokens=8)},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 0

    run = tmp_path / "run"
    synthesis = json.loads((run / "synthesis" / "manifest.json").read_text())
    assert synthesis["rows_in"] == synthesis["rows_out"] == PAIRS
    # Random weights write no well-formed task, but every pair was asked: none failed to generate.
    assert "generation_failed" not in synthesis["tasks_missing"]
    assert json.loads((run / "training" / "manifest.json").read_text())["steps"] == STEPS
    report = json.loads((run / "evaluation" / "report.json").read_text())
    for scored in ("base", "adapted"):
        assert report[scored]["demo_vqa"]["n"] == BENCHMARK_ROWS and "errors" not in report[scored]["demo_vqa"]

    # The export reloads with transformers, in the same chat format, and generates from an image.
    exported = run / "training" / "model"
    processor = load_processor(exported)
    reloaded = load_model(exported, "image-text-to-text", dtype="float32")
    text = render(chat_format(family, processor).family, [{"role": "user", "content": "<image>\nWhat is shown?"}],
                  add_generation_prompt=True)
    inputs = processor(text=[text], images=[[Image.new("RGB", (112, 112), (30, 200, 30))]], add_special_tokens=False,
                       return_tensors="pt")
    with torch.inference_mode():
        output = reloaded.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]
