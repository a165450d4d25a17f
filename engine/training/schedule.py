"""The training plan: how many optimizer steps each mixture phase trains, and the learning-rate schedule over them.

Pure arithmetic over the phases' example counts and the training section, so the driver computes the plan once and
every Ray Train worker follows the same one.
"""

from __future__ import annotations

import dataclasses
import math

from engine.config import ConfigError, TrainingConfig


@dataclasses.dataclass(frozen=True)
class Phase:
    """A stretch of training over one data set: `steps` optimizer steps starting at global step `start`."""

    name: str
    examples: int
    steps: int
    start: int

    @property
    def end(self) -> int:
        return self.start + self.steps


@dataclasses.dataclass(frozen=True)
class Plan:
    """The phases in training order; the driver computes it once and every worker follows it."""

    phases: tuple[Phase, ...]
    accumulation: int  # micro-batches per worker per optimizer step
    warmup_ratio: float

    @property
    def total_steps(self) -> int:
        return self.phases[-1].end

    def phase_of(self, step: int) -> Phase:
        return next((phase for phase in self.phases if step < phase.end), self.phases[-1])


def plan_training(counts: dict[str, int], training: TrainingConfig, num_workers: int) -> Plan:
    """Steps per phase: whole global batches per epoch times the epochs, or `max_steps` shared among the phases in
    proportion to their size. A last partial batch is left out, so every worker always has a full step."""
    per_epoch = {name: examples // training.global_batch_size for name, examples in counts.items()}
    for name, steps in per_epoch.items():
        if steps == 0:
            raise ConfigError(f"training.global_batch_size: phase {name!r} has {counts[name]} examples, fewer than "
                              f"one global batch ({training.global_batch_size})")
    if training.max_steps:
        total = sum(per_epoch.values())
        steps = [training.max_steps * size // total for size in per_epoch.values()]
        steps[-1] += training.max_steps - sum(steps)
    else:
        steps = [size * training.epochs for size in per_epoch.values()]
    phases, start = [], 0
    for (name, examples), count in zip(counts.items(), steps):
        phases.append(Phase(name, examples, count, start))
        start += count
    accumulation = training.global_batch_size // (num_workers * training.micro_batch_size)
    return Plan(tuple(phases), accumulation, training.warmup_ratio)


def lr_multiplier(step: int, plan: Plan) -> float:
    """Share of the peak learning rate for optimizer step `step` (0-based): in each phase a linear warm-up over
    `warmup_ratio` of its steps, then cosine decay towards 0 (each phase of two-stage training has its own)."""
    phase = plan.phase_of(step)
    done = step - phase.start
    warmup = math.ceil(plan.warmup_ratio * phase.steps)
    if done < warmup:
        return (done + 1) / warmup
    progress = min(1.0, (done - warmup) / max(1, phase.steps - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
