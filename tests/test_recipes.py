"""Every shipped config passes check-config, carries the command that runs it, and the paper's hyperparameters."""

from __future__ import annotations

import pytest

from engine.cli import main
from engine.config import load_config
from tests.conftest import REPO_ROOT

RECIPES = sorted((REPO_ROOT / "configs" / "recipes").glob("*.yaml"))
# DESIGN.md section 4: (learning rate, vision learning rate, weight decay, warm-up, DeepSpeed config) per model.
PAPER = {
    "Qwen/Qwen2-VL-2B-Instruct": (1e-5, None, 0.1, 0.1, "zero2.json"),
    "llava-hf/llama3-llava-next-8b-hf": (2e-5, 2e-6, 0.0, 0.03, "zero3.json"),
    "meta-llama/Llama-3.2-11B-Vision-Instruct": (5e-6, None, 0.1, 0.1, "zero3.json"),
}


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
