"""`adapt synthesize configs/demo.yaml` on the model route with real engines (the tiny offline models) on the
session's local Ray."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from engine.cli import main
from engine.synthesis.parsing import EMPTY_OUTPUT, NO_COMPLETE_QA_TURN, NO_QUESTION_UNDER_BOTH_HINTS
from tests.conftest import REPO_ROOT, load_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
TRAIN_PAIRS = 24
PARSE_REASONS = {EMPTY_OUTPUT, NO_COMPLETE_QA_TURN, NO_QUESTION_UNDER_BOTH_HINTS}


@pytest.fixture(scope="module")
def small_demo_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-data")
    args = ["--out", str(out), "--train", str(TRAIN_PAIRS), "--benchmark", "8", "--seed-tasks", "8", "--shard-size", "8"]
    assert load_tool("make_demo_data").main(args) == 0
    return out


def demo_overrides(data, models, output_dir) -> list[str]:
    """configs/demo.yaml's model route (as `make demo` runs it) pointed at test-built data and models; everything
    else as shipped."""
    return [
        "synthesis.synthesizer=model",
        "filter.judge=llm",
        f"data.path={data / 'captions'}",
        f"output_dir={output_dir}",
        f"synthesis.engine.model={models / 'tiny-qwen2-vl'}",
        f"filter.engine.model={models / 'tiny-text-llm'}",
        f"training.model={models / 'tiny-qwen2-vl'}",
        f"training.deepspeed_config={REPO_ROOT / 'configs/deepspeed/zero2.json'}",
        f"evaluation.engine.model={models / 'tiny-qwen2-vl'}",
        f"evaluation.benchmarks=[{{task: demo_vqa, path: {data / 'benchmark/demo_vqa.parquet'}}}]",
    ]


def synthesize(overrides: list[str], output_dir) -> dict:
    assert main(["synthesize", str(REPO_ROOT / "configs/demo.yaml"), *overrides]) == 0
    return json.loads((output_dir / "synthesis" / "manifest.json").read_text())


def assert_balanced(manifest: dict) -> None:
    assert manifest["rows_in"] == TRAIN_PAIRS
    assert manifest["rows_in"] == (
        manifest["rows_out"] + sum(manifest["rows_dropped"].values()) + sum(manifest["rows_quarantined"].values())
    )


@pytest.mark.parametrize("backend", ["vllm", "transformers"])
def test_demo_config_with_model_engines(backend, ray_cluster, small_demo_data, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    overrides = demo_overrides(small_demo_data, tiny_model_dir, out)
    overrides += [f"synthesis.engine.backend={backend}", f"filter.engine.backend={backend}"]
    manifest = synthesize(overrides, out)

    assert_balanced(manifest)
    assert manifest["rows_quarantined"] == {}  # the demo's pairs are all valid
    assert manifest["synthesizer"].endswith("tiny-qwen2-vl") and manifest["filter"].endswith("tiny-text-llm")
    assert manifest["output_tokens"] > 0
    # A random-weight synthesizer rarely writes a well-formed task: each row without one says why, and is dropped
    # whole, as released (only pairs with a task give an example).
    missing = sum(manifest["tasks_missing"].values())
    assert missing + manifest["tasks_synthesized"] == TRAIN_PAIRS
    assert set(manifest["tasks_missing"]) <= PARSE_REASONS
    assert manifest["rows_dropped"] == manifest["tasks_missing"]
    assert manifest["rows_out"] == manifest["tasks_synthesized"]
    examples = pq.read_table(out / "synthesis" / "instructions").to_pylist()
    assert {example["synthesizer"] for example in examples} <= {str(tiny_model_dir / "tiny-qwen2-vl")}


def test_llm_judge_labels_every_task(ray_cluster, small_demo_data, tiny_model_dir, tmp_path):
    """Rule-based tasks give the judge work: every task gets a verdict, and every drop says why."""
    out = tmp_path / "run"
    overrides = demo_overrides(small_demo_data, tiny_model_dir, out) + [
        "synthesis.synthesizer=rule_based",
        "filter.engine.backend=transformers",
    ]
    manifest = synthesize(overrides, out)

    assert_balanced(manifest)
    assert manifest["tasks_synthesized"] == TRAIN_PAIRS
    assert manifest["tasks_kept"] + sum(manifest["tasks_dropped"].values()) == manifest["tasks_synthesized"]
    assert sum(manifest["consistency"].values()) == manifest["tasks_synthesized"]
    tasks = pq.read_table(out / "synthesis" / "tasks").to_pylist()
    assert all(task["filter"].endswith("tiny-text-llm") for task in tasks)
    assert all(task["kept"] == (task["consistency"] == "yes") for task in tasks)
    assert all(task["reason"] is not None for task in tasks if not task["kept"])
