"""`adapt export CONFIG --to lmms-eval` (engine/evaluation/lmms_eval.py), loaded the way lmms-eval loads it.

Two probes run in a fresh interpreter where `import engine` fails and the working directory is elsewhere:
- by file: utils.py imported by its path (as lmms-eval's `!function` loader does), the benchmark read with pyarrow;
  it checks the kit alone: standalone utils, scores equal to the engine's on the same predictions, and that only the
  ROUGE-L tasks need `rouge` (the probe blocks it);
- by lmms-eval: its real TaskManager (0.7.3) indexes the folder, builds each task (its own `datasets` load of the
  relative data file, YAML parsing, generation settings) and aggregates with the exported functions, also after the
  folder is moved away from where it was exported. lmms-eval is installed without its dependencies into a temporary
  folder, once per pytest session (about 60 MB, 5 s; the environment already has torch, transformers and datasets);
  its full dependency set (wandb, sentence-transformers, ...) would not fit CI's budget.
  Where PyPI cannot be reached the test fails under CI and is skipped elsewhere, saying so.
What is checked by format only: that a model wrapper of lmms-eval runs the generation settings (no model is run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.cli import main
from engine.config import load_config
from engine.evaluation.benchmarks import benchmark_rows
from engine.evaluation.tasks import get_task
from tests.conftest import base_tree, engine_section, write_config
from tests.fixtures import task_benchmark_records, write_task_benchmark

# The five scorer shapes: open/closed VQA, lettered options, class-name options (vocabulary), multi-label, ROUGE-L.
TASKS = ("demo_vqa", "pmc_vqa", "food101", "foodseg103", "recipe1m")
ENGINE_MAX_TOKENS = 300  # caps the 1024-token tasks, not the 256-token ones
# lmms-eval 0.7.3 and the packages its TaskManager imports that this environment lacks, pinned.
LMMS_EVAL = ["lmms-eval==0.7.3", "accelerate==1.15.0", "colorama==0.4.6", "evaluate==0.4.6", "lxml==6.1.3",
             "portalocker==4.4.2", "pytz==2026.6", "sacrebleu==2.6.0", "tabulate==0.10.0", "tenacity==9.2.1"]

PROBE = r'''
import importlib.util, json, math, sys
mode, include, predictions, blocked = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), sys.argv[4]
for module in blocked.split(","):  # engine always: the exported task must work where adapt-engine is not installed
    sys.modules[module] = None
out = {}
if mode == "lmms-eval":
    from lmms_eval.tasks import TaskManager, get_task_dict
    tasks = get_task_dict(list(predictions), TaskManager(include_path=include, include_defaults=False))
for name, answers in predictions.items():
    if mode == "lmms-eval":
        task = tasks[name]
        docs, process, aggregation = list(task.test_docs()), task.process_results, task.aggregation()
        text, visual, settings = task.doc_to_text(docs[0]), task.doc_to_visual(docs[0]), task.config.generation_kwargs
    else:
        import pyarrow.parquet as pq
        spec = importlib.util.spec_from_file_location("utils", f"{include}/{name}/utils.py")
        utils = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(utils)
        docs = pq.read_table(f"{include}/{name}/test.parquet").to_pylist()
        process = utils.process_results
        aggregation = {metric: getattr(utils, f"aggregate_{metric}") for metric in utils.METRICS}
        text, visual, settings = utils.doc_to_text(docs[0]), utils.doc_to_visual(docs[0]), None
    items = {}
    for doc, answer in zip(docs, answers, strict=True):
        for metric, item in process(doc, [answer]).items():
            items.setdefault(metric, []).append(item)
    scores = {metric: aggregation[metric](values) for metric, values in items.items()}
    out[name] = {"docs": len(docs), "text": text, "visuals": len(visual), "settings": settings,
                 "scores": {k: None if math.isnan(v) else v for k, v in scores.items()}}
print(json.dumps(out))
'''


def require(reason: str) -> None:
    """Fail under CI, where every component must be there; skip elsewhere, naming what is missing."""
    if os.environ.get("ADAPT_CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def lmms_eval_path(tmp_path_factory) -> Path:
    """lmms-eval installed for this session into a folder of its own, not into the project's environment."""
    target = tmp_path_factory.mktemp("lmms-eval")
    # PyPI alone, as tools/install_env.sh does: a machine's pip config may point elsewhere or add constraints
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    environment["PIP_CONFIG_FILE"] = os.devnull
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-deps", "--target", str(target), *LMMS_EVAL],
                          env=environment, capture_output=True, text=True, timeout=300)
    if done.returncode:
        require(f"could not install lmms-eval from PyPI: {done.stderr[-500:]}")
    return target


def benchmark_config(workdir: Path) -> Path:
    """A config whose evaluation lists TASKS as local copies; one demo_vqa record has no image."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bench = workdir / "bench"
    for task in TASKS:
        write_task_benchmark(task, bench, rows=8)
    records = task_benchmark_records("demo_vqa", 8)
    records[3]["image"] = None  # becomes a row with `error`: no request, scored as unanswered
    pq.write_table(pa.Table.from_pylist(records), bench / "demo_vqa.parquet")
    tree = base_tree() | {"evaluation": {
        "benchmarks": [{"task": task, "path": f"./bench/{task}.parquet"} for task in TASKS],
        "engine": engine_section("./models/vlm", "qwen2-vl") | {"max_tokens": ENGINE_MAX_TOKENS}}}
    return write_config(workdir, tree)


def answers_for(task: str, rows: list[dict]) -> list[str]:
    """Answers that exercise each scorer: right, wrong, unparseable (multiple-choice fallback), partly right."""
    spec = get_task(task)
    answers = []
    for index, row in enumerate(rows):
        label = json.loads(row["label"]) if spec.list_label else row["label"]
        right = ", ".join(label) if spec.list_label else f"({label})" if spec.options else str(label)
        answers.append([right, "no idea at all", f"{right} and more", "", "yes"][index % 5])
    return answers


def engine_scores(task: str, rows: list[dict], answers: list[str]) -> dict:
    """What `adapt evaluate` reports for these answers: rows with `error` get no answer."""
    spec = get_task(task)
    scored = [(row["example_index"], spec.scoring_row({**row, "prediction": None if row["error"] else answer}))
              for row, answer in zip(rows, answers, strict=True)]
    summary = spec.summarize(scored)
    return {metric: summary.get(metric) for metric in spec.metrics}


def probe(mode: str, tasks_dir: Path, cwd: Path, predictions: dict, python_path: str | None = None,
          blocked: tuple[str, ...] = ("engine",)) -> subprocess.CompletedProcess:
    """Run PROBE in a fresh interpreter where the `blocked` modules cannot be imported."""
    (cwd / "predictions.json").write_text(json.dumps(predictions))
    (cwd / "probe.py").write_text(PROBE)
    environment = dict(os.environ)
    if python_path:
        environment["PYTHONPATH"] = python_path
    include = os.path.relpath(tasks_dir, cwd)  # relative: the folder must work from wherever lmms-eval is started
    return subprocess.run([sys.executable, "probe.py", mode, include, "predictions.json", ",".join(blocked)], cwd=cwd,
                          env=environment, capture_output=True, text=True, timeout=300)


def run_probe(mode: str, tasks_dir: Path, cwd: Path, predictions: dict, python_path: str | None = None,
              blocked: tuple[str, ...] = ("engine",)) -> dict:
    done = probe(mode, tasks_dir, cwd, predictions, python_path, blocked)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def exported(workdir, tmp_path_factory):
    """The export of benchmark_config, the engine's normalized rows per task, and the answers to score."""
    config_path = benchmark_config(workdir)
    out = tmp_path_factory.mktemp("lmms") / "tasks"
    assert main(["export", str(config_path), "--to", "lmms-eval", "--out", str(out)]) == 0
    config = load_config(config_path).with_absolute_paths()
    rows = {benchmark.task: list(benchmark_rows(get_task(benchmark.task), benchmark))
            for benchmark in config.evaluation.benchmarks}
    predictions = {f"adamllm_{task}": answers_for(task, rows[task]) for task in TASKS}
    return out, config, rows, predictions


def test_the_exported_utils_score_like_the_engine_without_engine(exported, tmp_path):
    out, _, rows, predictions = exported
    assert rows["demo_vqa"][3]["error"]  # the record without an image
    result = run_probe("file", out, tmp_path, predictions)
    for task in TASKS:
        assert result[f"adamllm_{task}"]["scores"] == engine_scores(task, rows[task], predictions[f"adamllm_{task}"])
    assert result["adamllm_demo_vqa"]["visuals"] == 1


def test_lmms_evals_task_manager_loads_the_export_from_elsewhere_and_scores_like_the_engine(
        exported, lmms_eval_path, tmp_path):
    out, config, rows, predictions = exported
    result = run_probe("lmms-eval", out, tmp_path, predictions, python_path=str(lmms_eval_path))
    for task in TASKS:
        spec, loaded = get_task(task), result[f"adamllm_{task}"]
        assert loaded["docs"] == len(rows[task]) and loaded["text"] == rows[task][0]["input"]
        # adapt evaluate's generation: greedy, the capped budget, no stop string (lmms-eval's default is "\n\n")
        budget = spec.answer_budget(config.evaluation.engine.max_tokens)
        assert loaded["settings"] == {"max_new_tokens": budget, "until": [], "temperature": 0.0, "top_p": 1.0,
                                      "num_beams": 1, "do_sample": False}
        assert loaded["scores"] == engine_scores(task, rows[task], predictions[f"adamllm_{task}"])


def test_only_the_rouge_tasks_need_rouge(exported, tmp_path):
    # Before, the copied metrics module imported `rouge` at its top: no exported task loaded without the package.
    out, _, rows, predictions = exported
    rouge_tasks = {task for task in TASKS if "rouge_l" in get_task(task).metrics}
    assert rouge_tasks == {"recipe1m"}
    others = {f"adamllm_{task}": predictions[f"adamllm_{task}"] for task in TASKS if task not in rouge_tasks}
    result = run_probe("file", out, tmp_path, others, blocked=("engine", "rouge"))
    for name, loaded in result.items():
        task = name.removeprefix("adamllm_")
        assert loaded["scores"] == engine_scores(task, rows[task], predictions[name])
    # and a ROUGE task without the package fails loudly rather than scoring every caption 0
    done = probe("file", out, tmp_path, {"adamllm_recipe1m": predictions["adamllm_recipe1m"]},
                 blocked=("engine", "rouge"))
    assert done.returncode != 0 and "rouge" in done.stderr.splitlines()[-1]


class _TaggedLoader(yaml.SafeLoader):
    """Reads lmms-eval's `!function module.name` tags as plain strings, to look at every value of a task YAML."""


_TaggedLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def strings_in(value) -> list[str]:
    if isinstance(value, dict):
        return [text for item in value.items() for part in item for text in strings_in(part)]
    if isinstance(value, list):
        return [text for item in value for text in strings_in(item)]
    return [value] if isinstance(value, str) else []


def test_the_task_folder_moved_elsewhere_loads_in_lmms_eval_and_names_no_absolute_path(
        exported, lmms_eval_path, tmp_path):
    out, _, rows, predictions = exported
    for task_yaml in out.glob("*/*.yaml"):
        text = task_yaml.read_text()
        assert str(out.parent) not in text
        assert not [value for value in strings_in(yaml.load(text, _TaggedLoader)) if os.path.isabs(value)]
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").mkdir()
    moved = shutil.move(out, tmp_path / "elsewhere" / "tasks")  # nothing is left where it was exported
    result = run_probe("lmms-eval", Path(moved), tmp_path / "run", predictions, python_path=str(lmms_eval_path))
    for task in TASKS:
        loaded = result[f"adamllm_{task}"]
        assert loaded["docs"] == len(rows[task])
        assert loaded["scores"] == engine_scores(task, rows[task], predictions[f"adamllm_{task}"])


def test_existing_task_folders_and_a_run_directory_are_refused(exported, capsys):
    out, _, _, _ = exported
    config = Path.cwd() / "run.yaml"
    assert main(["export", str(config), "--to", "lmms-eval", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(config), "--to", "lmms-eval", "--out", str(out), "--overwrite"]) == 0
    assert main(["export", str(Path.cwd()), "--to", "lmms-eval", "--out", str(out)]) == 2
    assert "SOURCE" in capsys.readouterr().err
