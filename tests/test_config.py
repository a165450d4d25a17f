"""Config loading: valid configs resolve, bad ones fail before any work with the field and the file named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.config import (
    ConfigError,
    EngineConfig,
    TrainingConfig,
    apply_override,
    dump_config,
    load_config,
    speed_only_fields,
)
from tests.conftest import base_tree, write_config

REPO = Path(__file__).resolve().parents[1]


def error_lines(path: Path, overrides: list[str] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value).splitlines()


def test_valid_config_resolves_defaults(workdir):
    config = load_config(write_config(workdir, base_tree()))
    assert config.training.learning_rate == 1e-5
    assert config.synthesis.engine.trust_remote_code is False
    assert config.filter.enabled is True
    assert config.cluster.address is None
    resolved = yaml.safe_load(dump_config(config))
    assert resolved["training"]["warmup_ratio"] == 0.1
    assert resolved["data"]["max_image_pixels"] == 89_478_485


def test_overrides_keep_yaml_types_and_reach_nested_fields(workdir):
    path = write_config(workdir, base_tree())
    config = load_config(
        path,
        ["training.learning_rate=2e-5", "synthesis.engine.batch_size=7", "filter.enabled=false", "cluster.num_cpus=4"],
    )
    assert config.training.learning_rate == 2e-5
    assert config.synthesis.engine.batch_size == 7
    assert config.filter.enabled is False
    assert config.cluster.num_cpus == 4


def test_override_can_create_a_section(workdir):
    config = load_config(write_config(workdir, base_tree()), ["cluster.address=auto"])
    assert config.cluster.address == "auto"


def test_fingerprint_changes_with_any_field(workdir):
    path = write_config(workdir, base_tree())
    assert load_config(path).fingerprint() == load_config(path).fingerprint()
    assert load_config(path).fingerprint() != load_config(path, ["seed=1"]).fingerprint()


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda t: t["training"].update(lr=1), "run.yaml: training.lr: unknown key"),
        (lambda t: t["training"].update(learning_rate="fast"), "run.yaml: training.learning_rate: Input should be"),
        (lambda t: t["data"].update(format="csv"), "run.yaml: data.format: Input should be"),
        (lambda t: t["data"].update(path="./nowhere"), "run.yaml: data.path: './nowhere' does not exist"),
        # A data set is never a hub id: a path without ./ is local too.
        (lambda t: t["data"].update(path="nowhere/pairs"), "run.yaml: data.path: 'nowhere/pairs' does not exist"),
        (lambda t: t["data"].update(path="nosuchfs://bucket/pairs"), "run.yaml: data.path: 'nosuchfs://bucket/pairs':"
                                                                      " no filesystem for nosuchfs://"),
        (lambda t: t.update(output_dir="nosuchfs://bucket/run"), "run.yaml: output_dir: 'nosuchfs://bucket/run': no"),
        (lambda t: t["training"].update(deepspeed_config="configs/absent.json"),
         "run.yaml: training.deepspeed_config: 'configs/absent.json' does not exist"),
        (lambda t: t["synthesis"]["engine"].update(family="mllama"),
         "run.yaml: synthesis.engine.backend: 'vllm' cannot run family 'mllama': vLLM dropped Mllama"),
        (lambda t: t["synthesis"]["engine"].update(min_pixels=4096, max_pixels=1024),
         "run.yaml: synthesis.engine.min_pixels: 4096 exceeds max_pixels (1024)"),
        (lambda t: t["training"].update(fused_adam=True), "run.yaml: training.fused_adam: DeepSpeed's FusedAdam is a"),
        (lambda t: t.update(cluster={"forward_env": ["ADAPT_TEST_UNSET_SECRET"]}),
         "run.yaml: cluster.forward_env: ADAPT_TEST_UNSET_SECRET not set in this environment"),
        (lambda t: t["synthesis"]["engine"].update(num_gpus=1), "run.yaml: synthesis.engine.num_gpus: is 1"),
        (lambda t: t["filter"]["engine"].update(kv_cache_gib=None), "run.yaml: filter.engine.kv_cache_gib: vLLM on CPU"),
        (lambda t: t["synthesis"]["engine"].update(backend="openai"), "run.yaml: synthesis.engine.base_url:"),
        (lambda t: t["filter"]["engine"].update(backend="transformers", device="cuda"), "run.yaml: filter.engine.num_gpus"),
        (lambda t: t["synthesis"].pop("engine"), "run.yaml: synthesis.engine: synthesizer 'model' needs an engine"),
        (lambda t: t["training"].update(model="./models/absent"), "run.yaml: training.model: './models/absent' does"),
        (lambda t: t["training"].update(precision="bf16"), "run.yaml: training.precision: 'bf16' needs GPUs"),
        (lambda t: t["training"].update(global_batch_size=7), "run.yaml: training.global_batch_size: 7 must be"),
        (lambda t: t.pop("data"), "run.yaml: data: Field required"),
        (lambda t: t["data"].update(min_image_side=64, max_image_side=32), "run.yaml: data.min_image_side: 64 exceeds"),
        (lambda t: t["filter"]["engine"].update(cpu_threads_bind="0-"), "run.yaml: filter.engine.cpu_threads_bind: '0-'"),
        (lambda t: t["filter"]["engine"].update(cpu_threads_bind="3-1"), "run.yaml: filter.engine.cpu_threads_bind: '3-1'"),
        (
            lambda t: t["filter"]["engine"].update(backend="transformers", cpu_threads_bind="0"),
            "run.yaml: filter.engine.cpu_threads_bind: only applies to backend 'vllm'",
        ),
    ],
)
def test_bad_config_names_field_and_file(workdir, mutate, expected):
    tree = base_tree()
    mutate(tree)
    path = write_config(workdir, tree)
    expected = expected.replace("run.yaml", str(path), 1)
    assert any(line.startswith(expected) for line in error_lines(path)), expected


def test_every_problem_is_reported_at_once(workdir):
    tree = base_tree()
    tree["training"]["lr"] = 1
    tree["data"]["format"] = "csv"
    lines = error_lines(write_config(workdir, tree))
    assert len(lines) == 2


def test_override_errors_point_at_the_command_line(workdir):
    path = write_config(workdir, base_tree())
    lines = error_lines(path, ["training.learning_rate=abc", "nope.x=1"])
    assert "command line: training.learning_rate: Input should be a valid number" in lines[0]
    assert "command line: nope: unknown key" in lines


def test_forwarded_variables_are_checked_by_name_only(workdir, monkeypatch):
    monkeypatch.setenv("ADAPT_TEST_SECRET", "s3cr3t-value")
    tree = base_tree()
    tree["cluster"] = {"forward_env": ["ADAPT_TEST_SECRET"]}
    config = load_config(write_config(workdir, tree))
    assert config.cluster.forward_env == ["ADAPT_TEST_SECRET"]
    assert "s3cr3t-value" not in dump_config(config)


def test_qwen2_vl_image_bounds_default_to_the_official_evaluation_and_reach_only_qwen_processors(workdir):
    config = load_config(write_config(workdir, base_tree()))
    assert config.synthesis.engine.processor_kwargs() == {"min_pixels": 224 * 224, "max_pixels": 1280 * 28 * 28}
    assert config.training.processor_kwargs() == {"min_pixels": 224 * 224, "max_pixels": 1280 * 28 * 28}
    assert config.filter.engine.processor_kwargs() == {}  # the text judge
    unbounded = load_config(write_config(workdir, base_tree()), ["synthesis.engine.min_pixels=null"])
    assert unbounded.synthesis.engine.processor_kwargs() == {"max_pixels": 1280 * 28 * 28}


def test_hub_ids_and_urls_are_not_checked_locally(workdir):
    tree = base_tree()
    tree["training"]["model"] = "Qwen/Qwen2-VL-2B-Instruct"
    tree["data"]["path"] = "memory://bucket/pairs/"
    config = load_config(write_config(workdir, tree))
    assert config.training.model == "Qwen/Qwen2-VL-2B-Instruct"


@pytest.mark.parametrize("text, fragment", [("a: [1", "not valid YAML"), ("- 1\n- 2\n", "top level must be a mapping")])
def test_unreadable_files_fail_clearly(workdir, text, fragment):
    path = workdir / "broken.yaml"
    path.write_text(text)
    lines = error_lines(path)
    assert lines[0].startswith(str(path)) and fragment in lines[0]


def test_missing_config_file(workdir):
    assert error_lines(workdir / "absent.yaml") == [f"{workdir / 'absent.yaml'}: config file not found"]


@pytest.mark.parametrize(
    "assignment, fragment", [("novalue", "not of the form"), ("training.model.x=1", "training.model is a value")]
)
def test_malformed_overrides(assignment, fragment):
    with pytest.raises(ConfigError, match=fragment):
        apply_override({"training": {"model": "m"}}, assignment)


def test_shipped_demo_config_is_well_formed():
    # The demo's local files exist only after `make demo` builds them; every other check must pass already.
    tree = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    problems = []
    try:
        load_config(REPO / "configs/demo.yaml")
    except ConfigError as err:
        problems = [line for line in str(err).splitlines() if "does not exist" not in line]
    assert problems == []
    assert tree["output_dir"] == "./runs/demo"


def test_absolute_paths_for_workers(workdir):
    config = load_config(write_config(workdir, base_tree())).with_absolute_paths()
    assert config.data.path == str(workdir / "data/pairs")
    assert config.synthesis.engine.model == str(workdir / "models/vlm")
    assert config.training.deepspeed_config == str(workdir / "ds.json")
    assert config.output_dir == str(workdir / "runs/x")


def tuning_tree(**changes) -> dict:
    tree = base_tree()
    tree["synthesizer_tuning"] = {**tree["training"], "task": "synthesizer", "dataset": "./ds.json", **changes}
    return tree


def test_synthesizer_tuning_paths_become_absolute(workdir):
    config = load_config(write_config(workdir, tuning_tree())).with_absolute_paths()
    assert config.synthesizer_tuning.dataset == str(workdir / "ds.json")
    assert config.synthesizer_tuning.model == str(workdir / "models/vlm")


@pytest.mark.parametrize(("change", "message"), [
    ({"task": "target"}, "synthesizer_tuning.task: must be 'synthesizer', got 'target'"),
    ({"dataset": None}, "synthesizer_tuning.dataset: synthesizer tuning needs a seed-task Parquet set"),
])
def test_synthesizer_tuning_is_checked(workdir, change, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(workdir, tuning_tree(**change)))


def test_a_tuned_synthesizer_needs_the_model_synthesizer(workdir):
    tree = tuning_tree()
    tree["synthesis"]["synthesizer"] = "rule_based"
    with pytest.raises(ConfigError, match="synthesis.synthesizer: a tuned synthesizer needs synthesizer 'model'"):
        load_config(write_config(workdir, tree))


# The architectures each family's checkpoints use (their config.json `architectures`).
FAMILY_ARCHITECTURES = {
    "llava-llama3": ("LlavaNextForConditionalGeneration",),
    "llava-hf-llama3": ("LlavaNextForConditionalGeneration",),
    "qwen2-vl": ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"),
    "mllama": ("MllamaForConditionalGeneration",),
    "text": ("LlamaForCausalLM", "Qwen2ForCausalLM"),
}


@pytest.mark.slow  # importing vLLM's model registry takes seconds, which is why the config check does not
def test_the_families_refused_for_vllm_are_those_the_installed_vllm_cannot_run():
    from engine.config import VLLM_UNSUPPORTED_FAMILIES

    vllm = pytest.importorskip("vllm")
    supported = set(vllm.ModelRegistry.get_supported_archs())
    runs = {family: all(arch in supported for arch in archs) for family, archs in FAMILY_ARCHITECTURES.items()}
    assert {family for family, ok in runs.items() if not ok} == set(VLLM_UNSUPPORTED_FAMILIES)


def test_speed_only_fields_are_marked_on_the_fields_themselves():
    # The one list of what a resumed run may change: resources and pacing, never what a stage writes.
    assert {"batch_size", "concurrency", "num_gpus", "resources", "kv_cache_gib"} <= speed_only_fields(EngineConfig)
    assert not {"model", "temperature", "max_tokens", "max_model_len", "family"} & speed_only_fields(EngineConfig)
    assert {"checkpoint_every", "max_failures", "cpus_per_worker"} <= speed_only_fields(TrainingConfig)
    assert not {"learning_rate", "global_batch_size", "num_workers", "epochs"} & speed_only_fields(TrainingConfig)
