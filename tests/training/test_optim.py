"""The optimizer: the vision encoder's own learning rate, no decay on biases and norms, the DeepSpeed config."""

from __future__ import annotations

from engine.models.loading import load_model
from engine.training.optim import deepspeed_config, parameter_groups
from tests.fixtures import training_config


def test_parameter_groups_split_the_vision_encoder_from_projector_and_llm(tiny_model_dir):
    model = load_model(tiny_model_dir / "tiny-qwen2-vl", "image-text-to-text", dtype="float32")
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    config = training_config(model=str(tiny_model_dir / "tiny-qwen2-vl"), learning_rate=2e-5,
                             vision_learning_rate=2e-6, weight_decay=0.1)
    groups = parameter_groups(model, config)
    by_group = {(g["part"], g["weight_decay"]): [names[id(p)] for p in g["params"]] for g in groups}
    assert {key: next(g["lr"] for g in groups if (g["part"], g["weight_decay"]) == key) for key in by_group} == {
        ("vision", 0.1): 2e-6, ("vision", 0.0): 2e-6, ("language", 0.1): 2e-5, ("language", 0.0): 2e-5}
    vision = by_group[("vision", 0.1)] + by_group[("vision", 0.0)]
    assert vision and all(".visual." in name and ".merger." not in name for name in vision)
    language = by_group[("language", 0.1)] + by_group[("language", 0.0)]
    assert any(".visual.merger." in name for name in language)  # the projector trains with the language model
    assert all(name.endswith(("bias", "norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight"))
               for name in by_group[("vision", 0.0)] + by_group[("language", 0.0)])
    assert sum(len(g["params"]) for g in groups) == len(names)


def test_deepspeed_config_takes_batches_precision_and_optimizer_from_the_training_section():
    config = deepspeed_config(training_config(global_batch_size=16, micro_batch_size=2, learning_rate=3e-4), 2)
    assert config["zero_optimization"]["stage"] == 2  # from configs/deepspeed/zero2.json
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"],
            config["gradient_accumulation_steps"]) == (16, 2, 4)
    assert config["bf16"] == {"enabled": False}
    assert config["optimizer"]["params"]["lr"] == 3e-4 and config["optimizer"]["params"]["torch_adam"] is True
