"""Export of a config's evaluation benchmarks as lmms-eval tasks, to run them in that harness and compare.

    adapt export CONFIG --to lmms-eval --out lmms_tasks
    lmms_tasks/
      adamllm_scoring/             the engine's scorers, copied: metrics.py, scoring.py, vocabularies.py, data/
      adamllm_demo_vqa/            adamllm_demo_vqa.yaml, utils.py, test.parquet
    python -m lmms_eval --include_path lmms_tasks --tasks adamllm_demo_vqa --model qwen2_vl ...

Each task folder holds its benchmark as `adapt evaluate` reads it: the records normalized by the same code
(engine.evaluation.benchmarks: label forms, options, the example index that seeds the multiple-choice fallback, a
record's problem in `error`), in one Parquet file that the YAML names relative to itself, which lmms-eval (0.7.3 and
later) resolves against the YAML's folder: the folder works from any working directory, moved or copied.

The utils need the standard library and Pillow (which lmms-eval depends on) only; the ROUGE-L tasks also need `rouge`
(`lmms-eval[metrics]` has it), which the copied metrics module imports when it first scores a caption. Scoring runs
the engine's own scorer modules, copied into adamllm_scoring/ at export time with their imports made relative, and
loaded by file path as lmms-eval loads utils.py. Generation is `adapt evaluate`'s: greedy, the task's
answer budget capped as the config caps it, and no stop string (lmms-eval's default stops at a blank line).
"""

from __future__ import annotations

import re
import shutil
from importlib.resources import files
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.config import BenchmarkConfig, EvaluationConfig
from engine.evaluation.benchmarks import BENCHMARK_ROW_SCHEMA, benchmark_rows
from engine.evaluation.tasks import TaskSpec, get_task
from engine.io.sinks import ExportRefused

TASK_PREFIX = "adamllm_"
KIT = "adamllm_scoring"
KIT_MODULES = ("metrics", "scoring", "vocabularies")
BENCHMARK_FILE = "test.parquet"
_ROWS_PER_WRITE = 256
# The only imports of `engine` the scorer modules may have, and what they become inside the kit package.
_KIT_REWRITES = ((re.compile(r"^from engine\.evaluation import ", re.M), "from . import "),
                 (re.compile(r"^from engine\.evaluation\.(\w+) import ", re.M), r"from .\1 import "),
                 (re.compile(r"""files\(["']engine["']\)"""), "files(__package__)"))
_ENGINE_REFERENCE = re.compile(r"""^\s*(from|import)\s+engine\b|["']engine["']""", re.M)


def lmms_task_name(spec: TaskSpec) -> str:
    return f"{TASK_PREFIX}{spec.name}"


# ---------------------------------------------------------------------------------------------------------------------
# The scoring kit


def kit_module_source(module: str) -> str:
    """An engine scorer module's source with its engine imports made relative to the kit package."""
    source = files("engine.evaluation").joinpath(f"{module}.py").read_text(encoding="utf-8")
    for pattern, replacement in _KIT_REWRITES:
        source = pattern.sub(replacement, source)
    leftover = _ENGINE_REFERENCE.search(source)
    if leftover:  # a new dependency of the scorers: the kit would fail where `engine` is not installed
        raise RuntimeError(f"engine/evaluation/{module}.py refers to engine outside the kit: {leftover.group(0)!r}")
    return source


def write_scoring_kit(out_dir: Path) -> None:
    kit = out_dir / KIT
    shutil.rmtree(kit, ignore_errors=True)
    (kit / "data").mkdir(parents=True)
    (kit / "__init__.py").write_text('"""adapt-engine\'s scorers, copied by `adapt export --to lmms-eval`."""\n')
    for module in KIT_MODULES:
        (kit / f"{module}.py").write_text(kit_module_source(module), encoding="utf-8")
    for data in files("engine").joinpath("data").iterdir():
        if data.name.endswith(".json"):
            (kit / "data" / data.name).write_text(data.read_text(encoding="utf-8"), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------------
# One task folder


def write_benchmark(spec: TaskSpec, benchmark: BenchmarkConfig, path: Path) -> int:
    """The benchmark's normalized rows (as `adapt evaluate` makes them) in one Parquet file, written in chunks so a
    large benchmark never sits in memory; returns the row count."""
    count = 0
    chunk: list[dict] = []
    with pq.ParquetWriter(path, BENCHMARK_ROW_SCHEMA) as writer:
        for row in benchmark_rows(spec, benchmark):
            chunk.append(row)
            count += 1
            if len(chunk) == _ROWS_PER_WRITE:
                writer.write_table(pa.Table.from_pylist(chunk, schema=BENCHMARK_ROW_SCHEMA))
                chunk.clear()
        if chunk:
            writer.write_table(pa.Table.from_pylist(chunk, schema=BENCHMARK_ROW_SCHEMA))
    if not count:
        raise ExportRefused(f"evaluation.benchmarks: {spec.name}: no records in "
                            f"{benchmark.path or f'hub:{spec.hub_id}/{spec.hub_config}'}")
    return count


def task_yaml(spec: TaskSpec, max_new_tokens: int) -> str:
    """The task's lmms-eval YAML (`!function` tags point into the utils.py beside it)."""
    metrics = [line for metric in spec.metrics for line in (
        f"  - metric: {metric}", f"    aggregation: !function utils.aggregate_{metric}", "    higher_is_better: true")]
    lines = [
        f"# {spec.title} ({spec.domain}), exported by adapt-engine: `adapt export CONFIG --to lmms-eval`.",
        f"task: {lmms_task_name(spec)}",
        f"tag: {TASK_PREFIX}{spec.domain}",
        "dataset_path: parquet",
        "dataset_kwargs:",
        f"  data_files: {{test: {BENCHMARK_FILE}}}",  # relative: lmms-eval resolves it against this file's folder
        "test_split: test",
        "output_type: generate_until",
        "doc_to_visual: !function utils.doc_to_visual",
        "doc_to_text: !function utils.doc_to_text",
        "doc_to_target: label",
        "generation_kwargs:",
        f"  max_new_tokens: {max_new_tokens}",
        "  until: []",
        "  temperature: 0",
        "  top_p: 1.0",
        "  num_beams: 1",
        "  do_sample: false",
        "process_results: !function utils.process_results",
        "metric_list:",
        *metrics,
        "metadata:",
        "  version: 1.0",
    ]
    return "\n".join(lines) + "\n"


_UTILS = '''"""lmms-eval entry points of the adapt-engine task {name!r} ({title}), written by
`adapt export --to lmms-eval`. They need lmms-eval only (Pillow comes with it; a ROUGE-L task also needs `rouge`):
the scoring is the engine's own code, copied into ../{kit} at export time, so a task scores here exactly as
`adapt evaluate` scores it."""

import importlib
import importlib.util
import io
import json
import math
import sys
from pathlib import Path

from PIL import Image

SCORER = {scorer!r}
LIST_LABEL = {list_label!r}
METRICS = {metrics!r}
KIT = {kit!r}


def _scorer():
    if KIT not in sys.modules:  # lmms-eval loads this file by its path: the kit beside it is loaded by path too
        folder = Path(__file__).resolve().parent.parent / KIT
        spec = importlib.util.spec_from_file_location(KIT, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        kit = importlib.util.module_from_spec(spec)
        sys.modules[KIT] = kit
        spec.loader.exec_module(kit)
    return importlib.import_module(KIT + ".scoring").task_scorer(SCORER)


def _image(doc):
    """The record's image as RGB, or None when there is none or it does not decode (`adapt evaluate` then asks
    nothing and scores the row as unanswered)."""
    if doc["image"] is None:
        return None
    try:
        return Image.open(io.BytesIO(doc["image"])).convert("RGB")
    except (OSError, ValueError):
        return None


def doc_to_visual(doc):
    image = _image(doc)
    return [] if image is None else [image]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    """The record's `input`; lmms-eval's model wrappers put the image before it, as the engine does."""
    return doc["input"] or ""


def process_results(doc, results):
    """One item per metric: the example's index (the seed of its multiple-choice fallback) and its scoring row."""
    answered = doc["error"] is None and _image(doc) is not None
    label = doc["label"]
    row = {{"prediction": results[0] if answered and results else None,
           "label": json.loads(label) if LIST_LABEL and label is not None else label,
           "answer_type": doc["answer_type"],
           "options": None if doc["options"] is None else json.loads(doc["options"])}}
    return {{metric: {{"index": doc["example_index"], "row": row}} for metric in METRICS}}


def _aggregate(metric, items):
    """A metric over all items, as the engine summarizes a task: rows its scorer refuses (no label, an unknown
    answer type) are left out; NaN when no row has this metric."""
    scorer = _scorer()
    scores = []
    for item in items:
        try:
            scores.append(scorer.score_example(item["row"], item["index"]))
        except ValueError:
            continue
    value = scorer.summarize(scores).get(metric)
    return math.nan if value is None else value
'''


def task_utils(spec: TaskSpec) -> str:
    """The task's utils.py: standalone entry points (stdlib, Pillow and the kit) bound to the task's scorer."""
    aggregations = "".join(f"\n\ndef aggregate_{metric}(items):\n    return _aggregate({metric!r}, items)\n"
                           for metric in spec.metrics)
    return _UTILS.format(name=spec.name, title=spec.title, kit=KIT, scorer=spec.scorer, list_label=spec.list_label,
                         metrics=tuple(spec.metrics)) + aggregations


def export_lmms_eval(out_dir: str | Path, evaluation: EvaluationConfig, overwrite: bool = False) -> dict[str, int]:
    """Write the scoring kit and one task folder per benchmark of the evaluation section; returns the row count per
    task. An existing task folder is refused (ExportRefused) unless `overwrite`."""
    out_dir = Path(out_dir)
    try:
        benchmarks = [(get_task(benchmark.task), benchmark) for benchmark in evaluation.benchmarks]
    except ValueError as err:
        raise ExportRefused(f"evaluation.benchmarks: {err}") from None
    folders = {spec.name: out_dir / lmms_task_name(spec) for spec, _ in benchmarks}
    taken = [str(folder) for folder in folders.values() if folder.exists()]
    if taken and not overwrite:
        raise ExportRefused(f"--out: {', '.join(taken)} already exist(s); pass --overwrite to replace")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_scoring_kit(out_dir)
    rows = {}
    for spec, benchmark in benchmarks:
        folder = folders[spec.name]
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        rows[spec.name] = write_benchmark(spec, benchmark, folder / BENCHMARK_FILE)
        (folder / f"{lmms_task_name(spec)}.yaml").write_text(task_yaml(spec, spec.answer_budget(evaluation.engine.max_tokens)))
        (folder / "utils.py").write_text(task_utils(spec))
    return rows
