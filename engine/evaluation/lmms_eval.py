"""Export the evaluation tasks as lmms-eval task folders, to cross-check the engine's numbers in that harness.

    export_lmms_eval("lmms_tasks/")  ->  lmms_tasks/adamllm_slake/adamllm_slake.yaml + utils.py, one folder a task
    python -m lmms_eval --include_path lmms_tasks --tasks adamllm_slake --model qwen2_vl ...   (or --tasks adamllm_biomedicine)

Each YAML names the task's hub data set (`dataset_path`, `dataset_name`, `test_split`), greedy generation with the
task's answer budget, and one metric per score the engine reports (`open_recall` + `closed_accuracy`, `accuracy`,
`rouge_l`, `f1` or `recall`), all tagged `adamllm_{domain}`. The generated utils.py is a thin shim over this module:
the prompt is the record's `input` after the image, and scoring calls the same scorers as `adapt evaluate`, so the
two harnesses differ only in how they run the model. lmms-eval must run where `engine` (adapt-engine) is installed.

Multiple-choice fallback guesses are seeded by the example's index in its benchmark; `process_docs` adds that index
as a column, since lmms-eval passes documents without their position.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from engine.evaluation.benchmarks import record_options
from engine.evaluation.tasks import TASKS, RecordError, TaskSpec, get_task

TASK_PREFIX = "adamllm_"
INDEX_COLUMN = "adamllm_index"


def lmms_task_name(spec: TaskSpec) -> str:
    return f"{TASK_PREFIX}{spec.name}"


# ---------------------------------------------------------------------------------------------------------------------
# What the generated utils.py calls at evaluation time


def process_docs(dataset):
    """The benchmark with each document's 0-based position added (the seed of its fallback guess)."""
    return dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))


def doc_to_visual(doc: Mapping[str, Any]) -> list[Image.Image]:
    """The document's image as RGB: a decoded `Image` feature, or raw bytes from a local Parquet copy."""
    image = doc["image"]
    if isinstance(image, Mapping):
        image = image.get("bytes")
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    return [image.convert("RGB")]


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None) -> str:
    """The question text; lmms-eval's model wrappers put the image before it, as the engine does."""
    return str(doc["input"])


def process_results(task: str, doc: Mapping[str, Any], results: list[str]) -> dict[str, Any]:
    """One item per reported metric: the example's index and its scoring row (label read as the engine reads it)."""
    spec = get_task(task)
    try:
        label = spec.label(doc["label"])
    except (KeyError, RecordError):  # the scorer then refuses the row: it is left out, as in the engine
        label = None
    try:
        options = record_options(doc) if spec.options else None
    except RecordError:
        options = None
    row = {"prediction": results[0] if results else None, "label": label, "answer_type": doc.get("answer_type"),
           "options": options}
    item = {"index": doc[INDEX_COLUMN], "row": row}
    return {metric: item for metric in spec.metrics}


def aggregate(task: str, metric: str, items: Iterable[Mapping[str, Any]]) -> float:
    """A metric over all items, computed by the engine's scorer (NaN when no example has that metric)."""
    value = get_task(task).summarize((item["index"], item["row"]) for item in items).get(metric)
    return math.nan if value is None else value


# ---------------------------------------------------------------------------------------------------------------------
# Writing the folders


def _dataset_lines(spec: TaskSpec, local_path: str | None) -> list[str]:
    # JSON strings are valid YAML scalars: names and paths need no further quoting.
    if local_path is not None:
        return ["dataset_path: parquet", "dataset_kwargs:", f"  data_files: {{test: {json.dumps(local_path)}}}",
                "test_split: test"]
    return [f"dataset_path: {json.dumps(spec.hub_id)}", f"dataset_name: {json.dumps(spec.hub_config)}",
            f"test_split: {json.dumps(spec.hub_split)}"]


def task_yaml(spec: TaskSpec, local_path: str | None = None) -> str:
    """The task's lmms-eval YAML (`!function` tags point into the utils.py written next to it)."""
    metrics = [line for metric in spec.metrics for line in (
        f"  - metric: {metric}", f"    aggregation: !function utils.aggregate_{metric}", "    higher_is_better: true")]
    lines = [
        f"# {spec.title} ({spec.domain}), exported by adapt-engine (engine/evaluation/lmms_eval.py).",
        f"task: {lmms_task_name(spec)}",
        f"tag: {TASK_PREFIX}{spec.domain}",
        *_dataset_lines(spec, local_path),
        "output_type: generate_until",
        "process_docs: !function utils.process_docs",
        "doc_to_visual: !function utils.doc_to_visual",
        "doc_to_text: !function utils.doc_to_text",
        "doc_to_target: label",
        "generation_kwargs:",
        f"  max_new_tokens: {spec.max_tokens}",
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


def task_utils(spec: TaskSpec) -> str:
    """The task's utils.py: named entry points that bind the task name and call this module."""
    aggregations = "".join(
        f"\n\ndef aggregate_{metric}(items):\n    return lmms_eval_export.aggregate(TASK, {metric!r}, items)\n"
        for metric in spec.metrics
    )
    return (
        f'"""lmms-eval entry points of the adapt-engine task {spec.name!r} ({spec.title}); the scoring is the '
        'engine\'s own."""\n\n'
        "from engine.evaluation import lmms_eval as lmms_eval_export\n\n"
        f"TASK = {spec.name!r}\n"
        "process_docs = lmms_eval_export.process_docs\n"
        "doc_to_visual = lmms_eval_export.doc_to_visual\n"
        "doc_to_text = lmms_eval_export.doc_to_text\n\n\n"
        "def process_results(doc, results):\n"
        "    return lmms_eval_export.process_results(TASK, doc, results)\n"
        f"{aggregations}"
    )


def export_lmms_eval(out_dir: str | Path, tasks: Iterable[str] | None = None,
                     local_paths: Mapping[str, str] | None = None) -> list[Path]:
    """Write one lmms-eval task folder per task (default: every task with a hub copy); returns the YAML paths.

    `local_paths` maps a task to a local Parquet copy to read instead of the hub (the only way to export a task
    without a hub copy, such as demo_vqa).
    """
    local_paths = dict(local_paths or {})
    names = list(tasks) if tasks is not None else [name for name, spec in TASKS.items()
                                                     if spec.hub_id or name in local_paths]
    written = []
    for name in names:
        spec = get_task(name)
        local_path = local_paths.get(name)
        if spec.hub_id is None and local_path is None:
            raise ValueError(f"task {name!r} has no hub copy: give its local Parquet file in local_paths")
        folder = Path(out_dir) / lmms_task_name(spec)
        folder.mkdir(parents=True, exist_ok=True)
        yaml_path = folder / f"{lmms_task_name(spec)}.yaml"
        yaml_path.write_text(task_yaml(spec, None if local_path is None else str(Path(local_path).resolve())))
        (folder / "utils.py").write_text(task_utils(spec))
        written.append(yaml_path)
    return written
