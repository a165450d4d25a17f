"""The evaluation stage end to end: two tiny models on a small demo benchmark, Ray Data + vLLM's CPU build; a killed
evaluation resumes. The model-selection and config checks at the top run without Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from engine.config import ConfigError, load_config
from engine.evaluation.runner import EvaluationStage, models_to_score, run_evaluation
from engine.evaluation.score_file import score_file
from tests.conftest import REPO_ROOT, load_tool

BENCHMARK_ROWS = 12
RESUME_ROWS = 24
# The brief's CPU engine: small KV cache, eager, half a CPU per actor.
ENGINE = {"dtype": "float32", "kv_cache_gib": 0.0625, "enforce_eager": True, "num_cpus": 0.5}


@pytest.fixture(scope="module")
def demo_benchmark(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo-data")
    args = ["--out", str(out), "--train", "0", "--benchmark", str(RESUME_ROWS), "--seed-tasks", "0", "--no-real"]
    assert load_tool("make_demo_data").main(args) == 0
    return out / "benchmark" / "demo_vqa.parquet"


@pytest.fixture(scope="module")
def second_model(tmp_path_factory) -> Path:
    """The tiny model rebuilt with another seed: a stand-in for an adapted model (other weights, same family)."""
    tiny = load_tool("make_tiny_models")
    out = tmp_path_factory.mktemp("seed-1")
    return tiny.build_model(tiny.TINY_MODELS[0], out, seed=1).path


def demo_config(benchmark: Path, models_dir: Path, output_dir: Path, limit: int = BENCHMARK_ROWS,
                extra: dict[str, str] | None = None):
    """configs/demo.yaml pointed at test-built data and models, with the brief's CPU engine settings."""
    vlm = models_dir / "tiny-qwen2-vl"
    overrides = [
        f"output_dir={output_dir}",
        f"data.path={benchmark.parent}",
        f"synthesis.engine.model={vlm}",
        f"filter.engine.model={models_dir / 'tiny-text-llm'}",
        f"training.model={vlm}",
        f"training.deepspeed_config={REPO_ROOT / 'configs/deepspeed/zero2.json'}",
        f"evaluation.engine.model={vlm}",
        f"evaluation.benchmarks=[{{task: demo_vqa, path: {benchmark}, limit: {limit}}}]",
        *(f"evaluation.engine.{key}={json.dumps(value)}" for key, value in ENGINE.items()),
        *(f"evaluation.models.{name}={path}" for name, path in (extra or {}).items()),
    ]
    return load_config(REPO_ROOT / "configs/demo.yaml", overrides)


# ---------------------------------------------------------------------------------------------------------------------
# Without Ray


def test_models_to_score(demo_benchmark, tiny_model_dir, tmp_path):
    config = demo_config(demo_benchmark, tiny_model_dir, tmp_path / "run", extra={"other": str(tiny_model_dir)})
    assert models_to_score(config) == {"base": str(tiny_model_dir / "tiny-qwen2-vl"), "other": str(tiny_model_dir)}
    adapted = tmp_path / "run" / "training" / "model"
    adapted.mkdir(parents=True)
    assert "adapted" not in models_to_score(config)  # an unfinished training folder is not a model yet
    (adapted / "config.json").write_text("{}")
    assert models_to_score(config)["adapted"] == str(adapted)


def test_stage_refuses_bad_settings(demo_benchmark, tiny_model_dir, tmp_path):
    config = demo_config(demo_benchmark, tiny_model_dir, tmp_path / "run")
    with pytest.raises(ConfigError, match="not a usable name"):
        EvaluationStage(config, models={"../x": "org/model"})
    broken = config.model_copy(deep=True)
    broken.evaluation.benchmarks[0].task = "mmmu"
    with pytest.raises(ConfigError, match="unknown task 'mmmu'"):
        EvaluationStage(broken)
    broken = config.model_copy(deep=True)
    broken.evaluation.engine.family = "text"
    with pytest.raises(ConfigError, match="not an image-text family"):
        EvaluationStage(broken)


def test_empty_benchmark_is_a_config_error(demo_benchmark, tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    config = demo_config(demo_benchmark, tiny_model_dir, tmp_path / "run")
    config.evaluation.benchmarks[0].path, config.evaluation.benchmarks[0].format = str(empty), "jsonl"
    with pytest.raises(ConfigError, match="demo_vqa: no records"):
        run_evaluation(config)


def test_predictions_are_redone_when_local_weights_change(demo_benchmark, tiny_model_dir, tmp_path):
    import shutil

    weights = tmp_path / "adapted"
    shutil.copytree(tiny_model_dir / "tiny-qwen2-vl", weights)
    config = demo_config(demo_benchmark, tiny_model_dir, tmp_path / "run")
    stage = EvaluationStage(config, models={"adapted": str(weights)})
    [(spec, benchmark)] = stage.benchmarks
    table = stage.prepare_table(spec, benchmark)
    before = stage.pair_fingerprint(str(weights), spec, table)
    assert stage.pair_fingerprint(str(weights), spec, table) == before
    time.sleep(0.01)
    (weights / "config.json").write_text((weights / "config.json").read_text() + "\n")  # retrained in place
    assert stage.pair_fingerprint(str(weights), spec, table) != before


# ---------------------------------------------------------------------------------------------------------------------
# On Ray with vLLM's CPU build


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_models_on_the_demo_benchmark(ray_cluster, demo_benchmark, tiny_model_dir, second_model, tmp_path):
    run = tmp_path / "run"
    config = demo_config(demo_benchmark, tiny_model_dir, run, extra={"adapted": str(second_model)})
    report = run_evaluation(config)

    evaluation = run / "evaluation"
    assert list(report) == ["base", "adapted"]
    for scores in (report["base"]["demo_vqa"], report["adapted"]["demo_vqa"]):
        assert scores["n"] == BENCHMARK_ROWS and scores["n_open"] + scores["n_closed"] == BENCHMARK_ROWS
        assert 0 <= scores["open_recall"] <= 100 and 0 <= scores["closed_accuracy"] <= 100
    assert json.loads((evaluation / "report.json").read_text()) == report
    assert "| Demo VQA | closed_accuracy |" in (evaluation / "report.md").read_text()
    assert "Δ adapted vs base" in (evaluation / "report.md").read_text()
    assert (evaluation / "report.png").read_bytes()[:4] == b"\x89PNG"

    for model in ("base", "adapted"):
        predictions = evaluation / "predictions" / model / "task=demo_vqa"
        rows = pq.read_table(predictions).to_pylist()
        assert sorted(row["example_index"] for row in rows) == list(range(BENCHMARK_ROWS))
        assert all(row["prediction"] is not None and row["error"] is None for row in rows)
        assert all(row["prompt"].startswith("<|im_start|>system") for row in rows)
        assert score_file("demo_vqa", str(predictions)) == report[model]["demo_vqa"]  # `adapt score` round trip
    manifest = json.loads((evaluation / "manifest.json").read_text())
    assert manifest["models"] == {"base": str(tiny_model_dir / "tiny-qwen2-vl"), "adapted": str(second_model)}
    assert manifest["predictions"]["base"]["demo_vqa"]["rows"] == BENCHMARK_ROWS

    assert run_evaluation(config) == report  # complete: re-reported from the files, no inference
    skipped = json.loads((evaluation / "manifest.json").read_text())["predictions"]
    assert skipped["base"]["demo_vqa"]["skipped"] and skipped["adapted"]["demo_vqa"]["skipped"]


def predict_actors() -> set[str]:
    """Ids of every actor this Ray session has started to hold the evaluation's engine, live or dead."""
    import ray

    return {actor_id for actor_id, actor in ray._private.state.actors().items()
            if "Predict" in actor.get("ActorClassName", "")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_task_of_a_model_goes_through_one_engine(ray_cluster, demo_benchmark, tiny_model_dir, tmp_path):
    """Four tasks, one model, a pool of one actor: one engine starts, and every task keeps its own rows."""
    run = tmp_path / "run"
    tasks = ("demo_vqa", "vqa_rad", "slake", "pathvqa")  # the same columns (image, question, answer, OPEN/CLOSED)
    config = demo_config(demo_benchmark, tiny_model_dir, run).model_copy(deep=True)
    config.evaluation.benchmarks = [config.evaluation.benchmarks[0].model_copy(update={"task": task})
                                    for task in tasks]
    before = predict_actors()
    report = run_evaluation(config)
    assert len(predict_actors() - before) == config.evaluation.engine.concurrency == 1
    assert set(report["base"]) == set(tasks)
    for task in tasks:
        rows = pq.read_table(run / "evaluation" / "predictions" / "base" / f"task={task}").to_pylist()
        assert sorted(row["example_index"] for row in rows) == list(range(BENCHMARK_ROWS))


def committed_checkpoints(run: Path) -> list[Path]:
    """Ray Data's committed checkpoint files of the base model's prediction job."""
    folder = run / "evaluation" / "_checkpoint" / "base"
    return [p for p in folder.glob("*/*.parquet") if not p.name.endswith(".pending.parquet")]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_killed_evaluation_resumes(ray_cluster, demo_benchmark, tiny_model_dir, tmp_path):
    import ray

    run = tmp_path / "run"
    config = demo_config(demo_benchmark, tiny_model_dir, run, limit=RESUME_ROWS).model_dump(mode="json")
    # The drivers join the session's Ray: when one is killed, Ray ends its job and the job's actors.
    config["cluster"] = {"address": ray.get_runtime_context().gcs_address}
    config["evaluation"]["engine"]["batch_size"] = 4
    # One batch in flight: batches then commit one after another and the kill lands between two (with all of them in
    # flight at once they would finish together).
    config["evaluation"]["engine"]["max_concurrent_batches"] = 1
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    script = ("import sys; from engine.config import load_config; "
              "from engine.evaluation.runner import run_evaluation; run_evaluation(load_config(sys.argv[1]))")
    command = [sys.executable, "-c", script, str(path)]

    # Its own session: killing the group stops exactly the driver and the Ray it started.
    first = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 240
    while not committed_checkpoints(run) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # no clean-up of any kind
    first.wait()
    assert not (run / "evaluation" / "report.json").exists(), "the evaluation finished before it could be killed"
    committed = committed_checkpoints(run)
    done_before = sum(pq.read_metadata(p).num_rows for p in committed)
    assert 0 < done_before < RESUME_ROWS

    second = subprocess.run(command, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    ids = pq.read_table(run / "evaluation" / "predictions" / "base" / "task=demo_vqa").column("example_id").to_pylist()
    assert len(ids) == len(set(ids)) == RESUME_ROWS
    assert set(committed) <= set(committed_checkpoints(run))  # the batches done before the kill were not redone
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert report["base"]["demo_vqa"]["n"] == RESUME_ROWS



@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_pair_whose_every_request_fails_fails_the_stage(ray_cluster, demo_benchmark, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    # Every prompt (an image of 16 tokens and the question) is longer than this context: vLLM refuses each request.
    config = demo_config(demo_benchmark, tiny_model_dir, run, limit=4)
    config.evaluation.engine.max_model_len = 16
    with pytest.raises(RuntimeError, match="base on demo_vqa: all 4 requests failed; the first: generation_failed: "):
        run_evaluation(config)
    evaluation = run / "evaluation"
    assert not (evaluation / "report.json").exists()  # no report of zeros
    state = json.loads((evaluation / "_state" / "base" / "demo_vqa.json").read_text())
    assert state["status"] == "failed" and state["first_error"].startswith("generation_failed: ")
    assert not (evaluation / "predictions" / "base" / "task=demo_vqa").exists()  # a rerun asks again
