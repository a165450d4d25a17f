"""Every shipped recipe passes check-config, carries the command that runs it and the paper's hyperparameters, and
runs end to end with tiny models of its architectures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from engine.cli import main
from engine.config import load_config
from engine.evaluation.tasks import get_task
from tests.conftest import REPO_ROOT
from tests.fixtures import write_parquet_pairs, write_task_benchmark

RECIPES = sorted((REPO_ROOT / "configs" / "recipes").glob("*.yaml"))
# DESIGN.md section 4: (learning rate, vision learning rate, weight decay, warm-up, DeepSpeed config) per model.
PAPER = {
    "Qwen/Qwen2-VL-2B-Instruct": (1e-5, None, 0.1, 0.1, "zero2.json"),
    "llava-hf/llama3-llava-next-8b-hf": (2e-5, 2e-6, 0.0, 0.03, "zero3.json"),
    "meta-llama/Llama-3.2-11B-Vision-Instruct": (5e-6, None, 0.1, 0.1, "zero3.json"),
}


@pytest.fixture(autouse=True)
def hub_token(monkeypatch):
    """The recipes forward HF_TOKEN (gated models), so checking them needs one set; the value never matters here."""
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_a_real_one")


def test_nine_recipes():
    assert len(RECIPES) == 9


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_is_valid_and_says_how_to_run_it(recipe, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    assert main(["check-config", str(recipe)]) == 0
    header = recipe.read_text().split("\n\n")[0]
    assert f"configs/recipes/{recipe.name}" in header and "python -m jobs.run" in header


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_uses_the_papers_hyperparameters(recipe, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    training = load_config(recipe).training
    lr, vision_lr, weight_decay, warmup, zero = PAPER[training.model]
    assert (training.learning_rate, training.vision_learning_rate) == (lr, vision_lr)
    assert (training.weight_decay, training.warmup_ratio) == (weight_decay, warmup)
    assert training.deepspeed_config.endswith(zero)
    assert (training.epochs, training.global_batch_size, training.max_length, training.mixture) == (
        1, 128, 6144, "single_stage"
    )


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_uses_the_official_lengths(recipe, monkeypatch):
    """The release's context lengths per stage (synthesizer 4096, judge 8192, evaluation 6144) and the paper's answer
    budget of 1024 tokens, which leaves the food tasks their own 256."""
    monkeypatch.chdir(REPO_ROOT)
    config = load_config(recipe)
    engines = (config.synthesis.engine, config.filter.engine, config.evaluation.engine)
    assert [engine.max_model_len for engine in engines] == [4096, 8192, 6144]
    assert config.evaluation.engine.max_tokens == 1024
    budgets = {get_task(benchmark.task).answer_budget(1024) for benchmark in config.evaluation.benchmarks}
    assert budgets == ({256, 1024} if recipe.stem.startswith("food_") else {1024})


def test_a_recipe_without_the_hub_token_is_refused_by_name(monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.delenv("HF_TOKEN")
    assert main(["check-config", str(RECIPES[0])]) == 2
    assert "cluster.forward_env: HF_TOKEN not set in this environment" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# Every recipe, run: its models swapped for tiny ones of the same architecture, its sizes and resources shrunk to
# this machine, `adapt run` on a few pairs and a small benchmark of each of its tasks.

TINY_MODELS = {
    "AdaptLLM/visual-instruction-synthesizer": "tiny-llava-next-synthesizer",
    "meta-llama/Meta-Llama-3-8B": "tiny-llama3-text",
    "Qwen/Qwen2-VL-2B-Instruct": "tiny-qwen2-vl",
    "llava-hf/llama3-llava-next-8b-hf": "tiny-llava-next-hf",
    "meta-llama/Llama-3.2-11B-Vision-Instruct": "tiny-mllama",
}
RUN_PAIRS, BENCHMARK_ROWS, TRAINING_STEPS = 8, 3, 2


def shrunk_engine(engine: dict, tiny: Path) -> dict:
    """The recipe's engine on CPU with the tiny model of the same architecture; its backend, family and node-group
    resources kept."""
    shrunk = {**engine, "model": str(tiny / TINY_MODELS[engine["model"]]), "device": "cpu", "num_gpus": 0,
              "num_cpus": 0.5, "concurrency": 1, "batch_size": 8, "dtype": "float32",
              "max_tokens": min(engine["max_tokens"], 16), "min_pixels": None, "max_pixels": None}
    if engine["backend"] == "vllm":
        shrunk.update(kv_cache_gib=0.0625, enforce_eager=True, max_model_len=1024)
    return shrunk


def shrunk_recipe(recipe: Path, tiny: Path, work: Path) -> dict:
    tree = yaml.safe_load(recipe.read_text())
    tree["output_dir"] = str(work / "run")
    tree["cluster"] = {"forward_env": tree["cluster"]["forward_env"]}  # the session's Ray, not `address: auto`
    tree["data"]["path"] = str(write_parquet_pairs(work / "pairs", RUN_PAIRS, shards=2))
    # A random-weight synthesizer writes no task; the release would then drop every pair and leave nothing to train.
    tree["synthesis"]["keep_pairs_without_task"] = True
    for section in ("synthesis", "filter", "evaluation"):
        tree[section]["engine"] = shrunk_engine(tree[section]["engine"], tiny)
    tree["training"].update(model=str(tiny / TINY_MODELS[tree["training"]["model"]]), use_gpu=False,
                            precision="fp32", num_workers=1, cpus_per_worker=0.5, global_batch_size=2,
                            micro_batch_size=1, max_steps=TRAINING_STEPS, max_length=1024, min_pixels=None,
                            max_pixels=None)
    tree["evaluation"]["benchmarks"] = [
        {"task": benchmark["task"], "path": str(write_task_benchmark(benchmark["task"], work / "benchmarks",
                                                                     BENCHMARK_ROWS))}
        for benchmark in tree["evaluation"]["benchmarks"]]
    return tree


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_runs_end_to_end_on_tiny_models(recipe, ray_cluster, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the recipes' deepspeed_config is relative to the repository
    tree = shrunk_recipe(recipe, tiny_model_dir, tmp_path)
    config = tmp_path / recipe.name
    config.write_text(yaml.safe_dump(tree))
    assert main(["run", str(config)]) == 0

    run = tmp_path / "run"
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["synthesis"]["rows_in"] == RUN_PAIRS
    assert summary["training"]["steps"] == TRAINING_STEPS
    tasks = [benchmark["task"] for benchmark in tree["evaluation"]["benchmarks"]]
    report = summary["evaluation"]
    assert list(report) == ["base", "adapted"]
    for model in report:
        assert sorted(report[model]) == sorted(tasks)
        assert all(scores["n"] == BENCHMARK_ROWS and not scores.get("errors") for scores in report[model].values())
    states = json.loads((run / "evaluation" / "manifest.json").read_text())["predictions"]
    assert {state["failed_requests_pct"] for model in states.values() for state in model.values()} == {0.0}
