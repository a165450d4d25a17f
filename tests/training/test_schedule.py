"""The training plan: whole global batches per phase, max_steps shared by size, warm-up then cosine per phase."""

from __future__ import annotations

import itertools

import pytest

from engine.config import ConfigError
from engine.training.schedule import lr_multiplier, plan_training
from tests.fixtures import training_config


def test_plan_counts_whole_global_batches_per_epoch():
    plan = plan_training({"train": 50}, training_config(epochs=3), num_workers=2)
    assert [(p.name, p.steps, p.start) for p in plan.phases] == [("train", 18, 0)]  # 50 // 8 = 6 per epoch
    assert plan.accumulation == 2 and plan.total_steps == 18


def test_max_steps_is_shared_among_phases_by_size():
    plan = plan_training({"captions": 80, "instructions": 40}, training_config(max_steps=9), num_workers=2)
    assert [(p.name, p.steps, p.start) for p in plan.phases] == [("captions", 6, 0), ("instructions", 3, 6)]


def test_a_phase_smaller_than_one_global_batch_is_a_config_error():
    with pytest.raises(ConfigError, match="training.global_batch_size: phase 'instructions' has 5 examples"):
        plan_training({"captions": 80, "instructions": 5}, training_config(), num_workers=2)


def test_warmup_then_cosine_restarting_in_each_phase():
    plan = plan_training({"captions": 80, "instructions": 80}, training_config(warmup_ratio=0.2), num_workers=2)
    schedule = [lr_multiplier(step, plan) for step in range(plan.total_steps)]
    # 10 steps per phase: 2 of linear warm-up, then cosine from the peak towards 0.
    assert schedule[:3] == [0.5, 1.0, 1.0]
    assert all(a > b for a, b in itertools.pairwise(schedule[2:10]))
    assert 0 < schedule[9] < 0.05
    assert schedule[10:20] == schedule[:10]
