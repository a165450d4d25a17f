"""The ablation grid: variant selection, configs that share a synthesis run, the paper-shaped table, and two variants
end to end."""

from __future__ import annotations

import json

import pytest

from engine.ablation import VARIANT_NAMES, plan_variants, render_table, run_ablation, select_variants
from engine.config import ConfigError, load_config
from tests.conftest import REPO_ROOT, base_tree, load_tool, write_config


def test_all_variants_by_default_and_unknown_names_refused():
    assert [variant.name for variant in select_variants(None)] == list(VARIANT_NAMES)
    assert [variant.name for variant in select_variants(["model", "caption_only"])] == ["caption_only", "model"]
    with pytest.raises(ConfigError, match="unknown nope"):
        select_variants(["nope"])


def test_variants_with_the_same_synthesis_share_one_run(workdir):
    config = load_config(write_config(workdir, base_tree()))  # the base config synthesizes with its model
    planned = {variant.name: run for variant, run in plan_variants(config, select_variants(None))}
    root = f"{workdir}/runs/x/ablation"
    assert {name: run.output_dir for name, run in planned.items()} == {name: f"{root}/{name}" for name in VARIANT_NAMES}
    # caption_only synthesizes as configured (model); model and model_two_stage reuse its instruction set.
    assert planned["caption_only"].training.dataset is None
    assert planned["model"].training.dataset == f"{root}/caption_only/synthesis/instructions"
    assert planned["model_two_stage"].training.dataset == f"{root}/caption_only/synthesis/instructions"
    assert planned["model_two_stage"].training.mixture == "two_stage"
    # Different synthesis settings: their own runs.
    assert planned["rule_based"].training.dataset is None
    assert planned["rule_based"].synthesis.synthesizer == "rule_based"
    assert planned["model_no_filter"].training.dataset is None and not planned["model_no_filter"].filter.enabled


def test_table_has_a_row_per_model_and_a_column_per_metric():
    scores = {"open_recall": 10.0, "closed_accuracy": 50.0, "n": 4}
    results = {"base": {"demo_vqa": dict(scores, open_recall=0.0)}, "caption_only": {"demo_vqa": scores},
               "model": {"demo_vqa": dict(scores, closed_accuracy=75.5)}}
    table = render_table(results, select_variants(["caption_only", "model", "model_two_stage"]),
                         {"model_two_stage": "no synthetic task kept"})
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines == [
        "| Model | What it was trained on | Demo VQA open_recall | Demo VQA closed_accuracy |",
        "| base | nothing (the model as given) | 0.00 | 50.00 |",
        "| caption_only | captions only, no synthetic tasks | 10.00 | 50.00 |",
        "| model | model-synthesized tasks, filtered, single stage | 10.00 | 75.50 |",
        "| model_two_stage | model-synthesized tasks, filtered, captions then tasks (not trained: no synthetic task "
        "kept) | – | – |",
    ]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_variants_end_to_end_share_one_synthesis(ray_cluster, tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    assert load_tool("make_demo_data").main(["--out", str(data), "--train", "16", "--benchmark", "8",
                                             "--seed-tasks", "0", "--no-real"]) == 0
    vlm = tiny_model_dir / "tiny-qwen2-vl"
    config = load_config(REPO_ROOT / "configs/demo.yaml", [
        f"output_dir={tmp_path / 'run'}", f"data.path={data / 'captions'}",
        f"synthesis.engine.model={vlm}", f"filter.engine.model={tiny_model_dir / 'tiny-text-llm'}",
        f"training.model={vlm}", f"training.deepspeed_config={REPO_ROOT / 'configs/deepspeed/zero2.json'}",
        "training.num_workers=1", "training.global_batch_size=4", "training.max_steps=2",
        f"evaluation.engine.model={vlm}", "evaluation.engine.kv_cache_gib=0.0625",
        f"evaluation.benchmarks=[{{task: demo_vqa, path: {data / 'benchmark/demo_vqa.parquet'}}}]",
    ])
    table = run_ablation(config, ["caption_only", "rule_based"])

    root = tmp_path / "run" / "ablation"
    assert (root / "ablation.md").read_text() == table
    assert [line.split(" | ")[0] for line in table.splitlines()[6:]] == ["| base", "| caption_only", "| rule_based"]
    assert json.loads((root / "evaluation" / "report.json").read_text()).keys() == {"base", "caption_only",
                                                                                     "rule_based"}
    # The demo config synthesizes rule-based: both variants train on the one synthesis run of the first.
    assert (root / "caption_only" / "synthesis" / "manifest.json").is_file()
    assert not (root / "rule_based" / "synthesis").exists()
    trained_on = json.loads((root / "rule_based" / "training" / "manifest.json").read_text())["dataset"]
    assert trained_on == str(root / "caption_only" / "synthesis" / "instructions")
