"""The training stage: planning, schedule, parameter groups and DeepSpeed settings (fast), and on a local Ray with the
tiny Qwen2-VL (slow): the demo config's training (2 workers, ZeRO-2) killed after a checkpoint and resumed, its loss
curve and its export in transformers and vLLM; a short ZeRO-3 run over both phases of two-stage training."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from engine.config import ConfigError, EngineConfig, RunConfig, TrainingConfig
from engine.io.sinks import export_llama_factory
from engine.models.backends import GenerationRequest, create_backend
from engine.models.families import render
from engine.models.loading import load_model
from engine.records import EXAMPLE_SCHEMA, SEED_TASK_SCHEMA
from engine.synthesis.examples import conversation
from engine.synthesis.parsing import SynthesizedTask
from engine.synthesis.prompts import synthesizer_prompt, synthesizer_stop
from engine.training import mixture
from engine.training.loop import (
    MetricsLog,
    TrainingStage,
    deepspeed_config,
    lr_multiplier,
    parameter_groups,
    plan_training,
    read_llama_factory,
    read_metrics,
    run_synthesizer_tuning,
    training_fingerprint,
)
from tests.conftest import REPO_ROOT, in_process_vllm, load_tool

EXAMPLES = 48  # 6 steps per epoch at the demo's global batch of 8
RESUME_EPOCHS = 2
CHECKPOINT_EVERY = 4


# ---------------------------------------------------------------------------------------------------------- helpers


def write_instruction_set(folder: Path, count: int) -> Path:
    """`count` demo images with their captions and, for three rows in four, a colour question composed the way
    synthesis composes it, as an instruction set (EXAMPLE_SCHEMA)."""
    demo = load_tool("make_demo_data")
    rows = []
    for index, pair in enumerate(demo.build_captions(seed=0, count=count)):
        colour = json.loads(pair["meta"])["colour"]
        task = None if index % 4 == 3 else SynthesizedTask(
            question="What colour is the shape?", precise=colour, informative=f"The shape is filled with {colour}.")
        messages, kind = conversation(pair["caption"], task, seed=index)
        rows.append({"id": pair["id"], "source_id": pair["id"], "images": [pair["image"]], "messages": messages,
                     "kind": kind})
    folder.mkdir(parents=True)
    columns = {field.name: [row.get(field.name) for row in rows] for field in EXAMPLE_SCHEMA}
    pq.write_table(pa.Table.from_pydict(columns, schema=EXAMPLE_SCHEMA), folder / "part-00000.parquet")
    return folder


def write_seed_tasks(folder: Path, count: int) -> Path:
    """The demo's seed data for synthesizer tuning (SEED_TASK_SCHEMA)."""
    rows = load_tool("make_demo_data").build_seed_tasks(seed=0, count=count)
    folder.mkdir(parents=True)
    columns = {field.name: [row[field.name] for row in rows] for field in SEED_TASK_SCHEMA}
    pq.write_table(pa.Table.from_pydict(columns, schema=SEED_TASK_SCHEMA), folder / "seed_tasks.parquet")
    return folder


def demo_training_section(model: Path, dataset: Path, **changes) -> dict:
    """configs/demo.yaml's training section, pointed at the test's model and data."""
    training = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())["training"]
    return training | {"model": str(model), "dataset": str(dataset),
                       "deepspeed_config": str(REPO_ROOT / training["deepspeed_config"])} | changes


def run_config(run: Path, dataset: Path, training: dict, temp_dir: str | None = None) -> dict:
    return {
        "output_dir": str(run),
        "cluster": {"num_cpus": 4, "temp_dir": temp_dir},
        "data": {"path": str(dataset), "format": "parquet"},
        "synthesis": {"synthesizer": "rule_based"},
        "filter": {"judge": "lexical"},
        "training": training,
    }


def training_config(**fields) -> TrainingConfig:
    base = {"model": "org/model", "family": "qwen2-vl", "use_gpu": False, "precision": "fp32", "num_workers": 2,
            "micro_batch_size": 2, "global_batch_size": 8,
            "deepspeed_config": str(REPO_ROOT / "configs" / "deepspeed" / "zero2.json")}
    return TrainingConfig.model_validate(base | fields)


def latest_checkpoint_step(run: Path) -> int | None:
    """The step of the checkpoint Ray Train resumes from (its snapshot file records the rank-0 metrics we report)."""
    snapshot = run / "training" / "checkpoints" / "checkpoint_manager_snapshot.json"
    try:
        return json.loads(snapshot.read_text())["latest_checkpoint_result"]["metrics"]["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def metrics(run: Path) -> list[dict[str, str]]:
    return read_metrics(str(run / "training" / "metrics.csv"))


def train_command(config: Path) -> list[str]:
    code = "import sys; from engine.config import load_config; from engine.training.loop import run_training; " \
           "run_training(load_config(sys.argv[1]))"
    return [sys.executable, "-c", code, str(config)]


def red_image() -> Image.Image:
    return Image.new("RGB", (112, 112), (205, 45, 40))


def describe_request() -> GenerationRequest:
    prompt = render("qwen2-vl", [{"role": "user", "content": "<image>\nDescribe the image."}],
                    add_generation_prompt=True)
    return GenerationRequest(prompt, [red_image()], max_tokens=16)




# ------------------------------------------------------------------------------------------------ planning (fast)


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


def test_the_fingerprint_ignores_resource_fields():
    tree = run_config(Path("/tmp/run"), REPO_ROOT, {"model": "org/model", "family": "qwen2-vl", "use_gpu": False,
                                                    "precision": "fp32"})
    base = RunConfig.model_validate(tree)
    faster = RunConfig.model_validate(tree | {"training": tree["training"] | {"cpus_per_worker": 2,
                                                                             "checkpoint_every": 7}})
    other = RunConfig.model_validate(tree | {"training": tree["training"] | {"learning_rate": 1e-4}})
    assert training_fingerprint(base) == training_fingerprint(faster) != training_fingerprint(other)


def test_metrics_are_cut_back_to_the_resumed_step(tmp_path):
    url = str(tmp_path / "training" / "metrics.csv")
    log = MetricsLog(url, resume_step=0)
    for step in range(1, 7):
        log.append({"step": step, "loss": 1.0 / step})
    MetricsLog(url, resume_step=4).append({"step": 5, "loss": 0.5})
    assert [(row["step"], row["loss"]) for row in read_metrics(url)] == [
        ("1", "1.0"), ("2", "0.5"), ("3", "0.3333333333333333"), ("4", "0.25"), ("5", "0.5")]


def test_a_llama_factory_export_reads_back_as_instruction_rows(tmp_path):
    instructions = write_instruction_set(tmp_path / "instructions", 8)
    export_llama_factory(instructions, tmp_path / "lf")
    rows = read_llama_factory(str(tmp_path / "lf" / "adapt_instructions.json"))
    originals = pq.read_table(instructions).to_pylist()
    assert [row["id"] for row in rows] == [row["id"] for row in originals]
    assert [mixture.example_kind(row | {"images": [None]}) for row in rows] == [row["kind"] for row in originals]
    assert Path(rows[0]["images"][0]).read_bytes() == originals[0]["images"][0]


# ------------------------------------------------------------------------------ the demo's training, killed and resumed


@dataclasses.dataclass
class ResumedRun:
    run: Path
    config: Path
    before_kill: list[dict[str, str]]
    resumed_from: int
    final: list[dict[str, str]]
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_model_dir) -> ResumedRun:
    """configs/demo.yaml's training section (2 workers, ZeRO-2) on 48 demo examples for 2 epochs, checkpointing every 4
    steps: the driver is killed (SIGKILL of its process group) once a checkpoint exists and a later step was logged,
    then the same command runs again to the end."""
    root = tmp_path_factory.mktemp("resume")
    dataset = write_instruction_set(root / "instructions", EXAMPLES)
    run = root / "run"
    training = demo_training_section(tiny_model_dir / "tiny-qwen2-vl", dataset, epochs=RESUME_EPOCHS,
                                     checkpoint_every=CHECKPOINT_EVERY)
    config = root / "config.yaml"
    # Its own short Ray session dir: socket paths must stay under 107 bytes.
    config.write_text(yaml.safe_dump(run_config(run, dataset, training, temp_dir=f"/tmp/ray-train-{os.getpid()}")))

    started = time.monotonic()
    first = subprocess.Popen(train_command(config), start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while first.poll() is None and time.monotonic() < deadline:
        checkpoint, rows = latest_checkpoint_step(run), metrics(run)
        if checkpoint and rows and int(rows[-1]["step"]) > checkpoint:
            break
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # the driver's process group: exactly the Ray it started
    first.wait()
    killed = time.monotonic()
    assert not (run / "training" / "manifest.json").exists(), "the run finished before it could be killed"
    before_kill, resumed_from = metrics(run), latest_checkpoint_step(run)
    assert resumed_from, "no checkpoint was written before the kill"

    second = subprocess.run(train_command(config), check=False, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-4000:]
    return ResumedRun(run, config, before_kill, resumed_from, metrics(run),
                      {"until_kill": killed - started, "resumed_run": time.monotonic() - killed})


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_run_resumes_from_its_checkpoint(resumed_run, record_property):
    before, final, resumed_from = resumed_run.before_kill, resumed_run.final, resumed_run.resumed_from
    record_property("seconds", resumed_run.seconds)
    last_before = int(before[-1]["step"])
    assert CHECKPOINT_EVERY <= resumed_from < last_before
    assert [int(row["step"]) for row in final] == list(range(1, EXAMPLES // 8 * RESUME_EPOCHS + 1))
    # Steps up to the checkpoint were not trained again: their rows (timings included) are the first run's.
    assert final[:resumed_from] == before[:resumed_from]
    # Steps after it were: from the same weights, optimizer state and data position, so with the same examples
    # (data_crc hashes their ids) and the same loss.
    for redone, original in zip(final[resumed_from:last_before], before[resumed_from:]):
        assert redone["data_crc"] == original["data_crc"]
        assert float(redone["loss"]) == pytest.approx(float(original["loss"]), rel=1e-5)
        assert redone["lr"] == original["lr"]
    manifest = json.loads((resumed_run.run / "training" / "manifest.json").read_text())
    assert manifest["steps"] == manifest["planned_steps"] == len(final)


@pytest.mark.slow
def test_the_demo_training_loss_decreases(resumed_run):
    losses = [float(row["loss"]) for row in resumed_run.final]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0
    assert all(float(row["tokens_per_s"]) > 0 and int(row["samples"]) == 8 for row in resumed_run.final)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_export_loads_in_transformers_and_vllm_and_generates(resumed_run, tiny_model_dir):
    model_dir = resumed_run.run / "training" / "model"
    base = load_model(tiny_model_dir / "tiny-qwen2-vl", "image-text-to-text", dtype="float32").state_dict()
    trained = load_model(model_dir, "image-text-to-text", dtype="float32").state_dict()
    assert trained.keys() == base.keys() and any(not torch.equal(trained[k], base[k]) for k in base)

    def engine(backend: str, **fields) -> EngineConfig:
        return EngineConfig(model=str(model_dir), family="qwen2-vl", backend=backend, device="cpu", dtype="float32",
                            **fields)

    with create_backend(engine("transformers")) as backend:
        (reference,) = backend.generate([describe_request()])
    assert reference.ok and reference.text.strip()
    with in_process_vllm(), create_backend(engine("vllm", kv_cache_gib=0.0625, enforce_eager=True,
                                                  max_model_len=512)) as backend:
        (served,) = backend.generate([describe_request()])
    assert served.ok and served.text.strip()
    assert served.text.split()[:3] == reference.text.split()[:3]  # greedy: both engines run the same weights


@pytest.mark.slow
def test_a_complete_run_is_skipped(resumed_run):
    from engine.config import load_config

    manifest = json.loads((resumed_run.run / "training" / "manifest.json").read_text())
    outputs = [resumed_run.run / "training" / name for name in ("metrics.csv", "model/model.safetensors")]
    written = [path.stat().st_mtime_ns for path in outputs]
    assert TrainingStage(load_config(resumed_run.config)).run() == manifest
    assert [path.stat().st_mtime_ns for path in outputs] == written  # nothing trained or exported again


# ------------------------------------------------------------------------------------------------- ZeRO-3 (short)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_zero3_trains_both_phases_of_two_stage_training(ray_cluster, tmp_path, tiny_model_dir):
    dataset = write_instruction_set(tmp_path / "instructions", EXAMPLES)
    run = tmp_path / "run"
    training = demo_training_section(tiny_model_dir / "tiny-qwen2-vl", dataset, mixture="two_stage", max_steps=4,
                                     deepspeed_config=str(REPO_ROOT / "configs" / "deepspeed" / "zero3.json"))
    manifest = TrainingStage(RunConfig.model_validate(run_config(run, dataset, training))).run()

    rows = metrics(run)
    assert [(row["step"], row["phase"]) for row in rows] == [
        ("1", "captions"), ("2", "captions"), ("3", "instructions"), ("4", "instructions")]
    assert rows[0]["lr"] == rows[2]["lr"]  # each phase has its own warm-up and decay
    assert [phase["examples"] for phase in manifest["phases"]] == [48, 36]
    # Each worker wrote its own ZeRO-3 partition; Ray Train merged them into one checkpoint.
    checkpoint = max(path for path in (run / "training" / "checkpoints").glob("checkpoint_*") if path.is_dir())
    partitions = sorted(path.name for path in (checkpoint / "deepspeed").glob("zero_pp_rank_*_model_states.pt"))
    assert partitions == ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
    base = load_model(tiny_model_dir / "tiny-qwen2-vl", "image-text-to-text", dtype="float32").state_dict()
    gathered = load_model(run / "training" / "model", "image-text-to-text", dtype="float32").state_dict()
    assert all(gathered[k].shape == base[k].shape for k in base)  # full weights, not partitions
    assert sum(not torch.equal(gathered[k], base[k]) for k in base) == len(base)


# ---------------------------------------------------------------------------------------- synthesizer tuning (short)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_synthesizer_tuning_trains_on_seed_tasks_and_exports_a_synthesizer(ray_cluster, tmp_path, tiny_model_dir):
    seed_tasks = write_seed_tasks(tmp_path / "seed_tasks", 16)
    run = tmp_path / "run"
    tuning = demo_training_section(tiny_model_dir / "tiny-qwen2-vl", seed_tasks, task="synthesizer", num_workers=1,
                                   global_batch_size=4, micro_batch_size=2, max_length=512, max_steps=2)
    tree = run_config(run, seed_tasks, None) | {"synthesizer_tuning": tuning}
    tree["synthesis"] = {"synthesizer": "model", "engine": {"model": tuning["model"], "family": "qwen2-vl",
                                                            "backend": "transformers", "device": "cpu"}}
    manifest = run_synthesizer_tuning(RunConfig.model_validate(tree))

    assert manifest["task"] == "synthesizer" and manifest["phases"][0]["examples"] == 16
    rows = read_metrics(str(run / "synthesizer_tuning" / "metrics.csv"))
    assert [(row["phase"], row["samples"], row["dropped"]) for row in rows] == [("synthesizer", "4", "0")] * 2
    # The tuned model answers the synthesis prompt (the caption exchange, then an open user turn) as a synthesizer.
    caption = load_tool("make_demo_data").build_seed_tasks(seed=0, count=1)[0]["caption"]
    engine = EngineConfig(model=str(run / "synthesizer_tuning" / "model"), family="qwen2-vl", backend="transformers",
                          device="cpu", dtype="float32")
    request = GenerationRequest(synthesizer_prompt(caption, "qwen2-vl"), [red_image()], max_tokens=16,
                                stop=synthesizer_stop("qwen2-vl"), keep_special_tokens=True, stop_at_eos=False)
    with create_backend(engine) as backend:
        (result,) = backend.generate([request])
    assert result.ok and result.output_tokens > 0
