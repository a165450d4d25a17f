"""The training stage: its fingerprint and LLaMA-Factory input (fast), and on a local Ray with the tiny Qwen2-VL
(slow): the demo config's training (2 workers, ZeRO-2) killed after a checkpoint and resumed, its loss curve and its
export in transformers and vLLM; one of its workers killed mid-run and restarted by Ray Train within the same run;
synthesizer tuning; a short ZeRO-3 run over both phases of two-stage training. (Planning, schedule, optimizer groups and metrics: tests/training/test_schedule.py,
test_optim.py, test_metrics_log.py.)"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from engine.config import EngineConfig, RunConfig
from engine.io.run_dir import RunDir
from engine.io.sinks import export_llama_factory
from engine.models.backends import GenerationRequest, create_backend
from engine.models.families import render
from engine.models.loading import load_model
from engine.records import EXAMPLE_SCHEMA, SEED_TASK_SCHEMA
from engine.synthesis.compose import compose
from engine.synthesis.examples import conversation
from engine.synthesis.parsing import SynthesizedTask
from engine.synthesis.prompts import synthesizer_prompt, synthesizer_stop
from engine.training import mixture
from engine.training.loop import (
    TrainingStage,
    read_llama_factory,
    run_synthesizer_tuning,
    seed_task_names,
    training_fingerprint,
)
from engine.training.metrics_log import read_metrics
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
        messages, kind = conversation(pair["caption"], None, compose(task, index) if task else None)
        rows.append({"id": pair["id"], "source_id": pair["id"], "images": [{"bytes": pair["image"], "path": None}],
                     "messages": messages, "kind": kind})
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


def latest_checkpoint_step(run: Path) -> int | None:
    """The step of the checkpoint Ray Train resumes from (its snapshot file records the rank-0 metrics we report)."""
    snapshot = run / "training" / "checkpoints" / "checkpoint_manager_snapshot.json"
    try:
        return json.loads(snapshot.read_text())["latest_checkpoint_result"]["metrics"]["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def metrics(run: Path) -> list[dict[str, str]]:
    return read_metrics(str(run / "training" / "metrics.csv"))


def wait_for_a_step_after_a_checkpoint(run: Path, driver: subprocess.Popen, timeout: float = 300) -> None:
    """Until a checkpoint exists and a later step was logged (the driver's end or the timeout ends it sooner; the
    callers then find out what happened)."""
    deadline = time.monotonic() + timeout
    while driver.poll() is None and time.monotonic() < deadline:
        checkpoint, rows = latest_checkpoint_step(run), metrics(run)
        if checkpoint and rows and int(rows[-1]["step"]) > checkpoint:
            return
        time.sleep(0.1)


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




# ---------------------------------------------------------------------------------------------------- fast


def test_the_fingerprint_ignores_resource_fields():
    tree = run_config(Path("/tmp/run"), REPO_ROOT, {"model": "org/model", "family": "qwen2-vl", "use_gpu": False,
                                                    "precision": "fp32"})
    base = RunConfig.model_validate(tree)
    faster = RunConfig.model_validate(tree | {"training": tree["training"] | {"cpus_per_worker": 2,
                                                                             "checkpoint_every": 7}})
    other = RunConfig.model_validate(tree | {"training": tree["training"] | {"learning_rate": 1e-4}})
    assert training_fingerprint(base) == training_fingerprint(faster) != training_fingerprint(other)


def test_seed_task_names_come_from_the_optional_column_and_split_per_task(tmp_path):
    rows = [{"id": f"seed-{index:02d}", "task_name": "count" if index < 5 else "ocr"} for index in range(20)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "named.parquet")
    names = seed_task_names(str(tmp_path / "named.parquet"))
    assert names == [(row["id"], row["task_name"]) for row in rows]
    # 5 count rows -> int(4.5) = 4 trained, 1 dev; 15 ocr rows -> 13 trained, 2 dev: 3 in all.
    assert len(mixture.dev_ids(names, 0, 0.1)) == 3
    # A set written without the column (before it existed) is one task: 20 rows -> 18 trained, 2 dev.
    pq.write_table(pa.Table.from_pylist([{"id": row["id"]} for row in rows]), tmp_path / "unnamed.parquet")
    unnamed = seed_task_names(str(tmp_path / "unnamed.parquet"))
    assert unnamed == [(row["id"], None) for row in rows] and len(mixture.dev_ids(unnamed, 0, 0.1)) == 2


def test_a_llama_factory_export_reads_back_as_instruction_rows(tmp_path):
    instructions = write_instruction_set(tmp_path / "instructions", 8)
    export_llama_factory(str(instructions), tmp_path / "lf", "adapt_instructions", lambda row: [row])
    rows = read_llama_factory(str(tmp_path / "lf" / "adapt_instructions.json"))
    originals = pq.read_table(instructions).to_pylist()
    assert [row["id"] for row in rows] == [row["id"] for row in originals]
    assert [mixture.example_kind(row | {"images": [None]}) for row in rows] == [row["kind"] for row in originals]
    assert Path(rows[0]["images"][0]).read_bytes() == originals[0]["images"][0]["bytes"]


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
    wait_for_a_step_after_a_checkpoint(run, first)
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
    assert manifest["model"] == "./training/model" and manifest["metrics"] == "./training/metrics.csv"  # portable
    outputs = [resumed_run.run / "training" / name for name in ("metrics.csv", "model/model.safetensors")]
    written = [path.stat().st_mtime_ns for path in outputs]
    skipped = TrainingStage(load_config(resumed_run.config)).run()
    assert skipped["model"] == str(resumed_run.run / "training" / "model")  # read back where the run is now
    assert RunDir(str(resumed_run.run)).portable(skipped) == manifest
    assert [path.stat().st_mtime_ns for path in outputs] == written  # nothing trained or exported again


def train_workers(session: int) -> list[psutil.Process]:
    """The Ray Train worker processes in the session a driver leads (the Ray it started)."""
    workers = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if os.getsid(process.pid) == session and "RayTrainWorker" in " ".join(process.info["cmdline"] or []):
                workers.append(process)
        except (OSError, psutil.Error):  # gone meanwhile
            continue
    return workers


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_worker_is_restarted_and_the_run_resumes_by_itself(tmp_path, tiny_model_dir):
    """One of the two workers is SIGKILLed after a checkpoint: the same run (`training.max_failures`, default 3)
    restarts the workers from that checkpoint and ends with every planned step logged once."""
    dataset = write_instruction_set(tmp_path / "instructions", 32)  # 4 steps per epoch
    run = tmp_path / "run"
    training = demo_training_section(tiny_model_dir / "tiny-qwen2-vl", dataset, epochs=2, checkpoint_every=2)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(run_config(run, dataset, training, temp_dir=f"/tmp/ray-fail-{os.getpid()}")))
    log = tmp_path / "driver.log"
    with open(log, "w") as output:
        driver = subprocess.Popen(train_command(config), start_new_session=True, stdout=output, stderr=output)
    try:
        wait_for_a_step_after_a_checkpoint(run, driver)
        workers = train_workers(driver.pid)
        assert len(workers) == 2, f"expected the 2 Ray Train workers, found {[w.cmdline() for w in workers]}"
        killed_after = int(metrics(run)[-1]["step"])
        workers[1].kill()  # a process of the Ray this test's driver started
        driver.wait(timeout=400)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    output = log.read_text()
    assert driver.returncode == 0, output[-4000:]
    assert killed_after < 8, "the run finished before a worker could be killed"
    assert "resumed from the checkpoint of step" in output  # the same run, no second command
    assert [int(row["step"]) for row in metrics(run)] == list(range(1, 9))  # redone steps appear once
    assert json.loads((run / "training" / "manifest.json").read_text())["steps"] == 8


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

    # The demo's 16 seed rows are one seed task (no task_name): int(0.9 x 16) = 14 are trained on, 2 held out as dev.
    assert manifest["task"] == "synthesizer" and manifest["phases"][0]["examples"] == 14
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
