"""The optimizer: AdamW parameter groups (the vision encoder with its own learning rate) and the DeepSpeed config that
carries batch sizes, precision and the optimizer from the training section."""

from __future__ import annotations

import json
import re
from typing import Any

import fsspec
import torch

from engine.config import TrainingConfig

# The vision encoder's parameters per family (full names); the projector counts with the language model, as in the
# paper's recipes (LLaVA: vision tower 2e-6, projector and LLM 2e-5). Qwen2-VL's projector is the merger inside
# `visual`.
VISION_ENCODER = {
    "qwen2-vl": re.compile(r"(^|\.)visual\.(?!merger\.)"),
    "llava-llama3": re.compile(r"(^|\.)vision_tower\."),
    "llava-hf-llama3": re.compile(r"(^|\.)vision_tower\."),
    "mllama": re.compile(r"(^|\.)vision_model\."),
}


def parameter_groups(model: torch.nn.Module, training: TrainingConfig) -> list[dict[str, Any]]:
    """AdamW groups: vision encoder vs projector + language model (own learning rates), and within each, weights
    (decayed) vs biases and norm scales (not decayed, the usual AdamW practice)."""
    vision = VISION_ENCODER.get(training.family)
    learning_rates = {"vision": training.vision_learning_rate or training.learning_rate,
                      "language": training.learning_rate}
    grouped: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = "vision" if vision is not None and vision.search(name) else "language"
        decayed = parameter.ndim >= 2
        grouped.setdefault((part, decayed), []).append(parameter)
    return [
        {"params": params, "lr": learning_rates[part], "weight_decay": training.weight_decay if decayed else 0.0,
         "part": part}
        for (part, decayed), params in grouped.items()
    ]


def deepspeed_config(training: TrainingConfig, num_workers: int) -> dict[str, Any]:
    """The JSON's ZeRO, clipping and communication settings, with batch sizes, precision and the optimizer from the
    training section (the learning rate schedule is ours: see lr_multiplier)."""
    with fsspec.open(training.deepspeed_config) as file:
        config = json.load(file)
    config.update(
        train_batch_size=training.global_batch_size,
        train_micro_batch_size_per_gpu=training.micro_batch_size,
        gradient_accumulation_steps=training.global_batch_size // (num_workers * training.micro_batch_size),
        bf16={"enabled": training.precision == "bf16"},
        fp16={"enabled": False},
        optimizer={
            "type": "AdamW",
            "params": {
                "lr": training.learning_rate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": training.weight_decay,
                # torch's AdamW unless asked otherwise: DeepSpeed's FusedAdam JIT-compiles a CUDA kernel when the
                # first worker starts, which needs a CUDA toolkit matching torch's in the image (and fails on CPU).
                "torch_adam": not (training.use_gpu and training.fused_adam),
            },
        },
    )
    return config
