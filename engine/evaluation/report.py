"""The evaluation report of a run directory, computed from the prediction files alone.

    evaluation/predictions/{model}/{task}/*.parquet  ->  report.json  {model: {task: {metric: value, n, ...}}}
                                                         report.md    a table per metric: models side by side, and
                                                                      each model's change against `base`
                                                                      report.png   one bar group per task metric

Scores are recomputed from the stored predictions every time (never read back from the per-example `scores`
column), so a scorer fix or `adapt report RUN_DIR` needs no inference. Only (model, task) pairs whose predictions are
complete (the runner's state file says so) are reported: a killed run's partial predictions would give misleading
numbers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
import pyarrow.dataset as pads

from engine.evaluation.tasks import TASKS, TaskSpec, get_task
from engine.io.run_dir import STATE, EvaluationDir, RunDir

BASE_MODEL = "base"
# Models shown first, in this order; any other model follows in name order.
LEADING_MODELS = (BASE_MODEL, "adapted")
_SCORED_COLUMNS = ["example_index", "prediction", "label", "answer_type", "options", "error"]

Results = dict[str, dict[str, dict[str, Any]]]


def ordered_models(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [name for name in LEADING_MODELS if name in names] + sorted(names - set(LEADING_MODELS))


def ordered_tasks(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [name for name in TASKS if name in names] + sorted(names - set(TASKS))


def read_prediction_rows(path: str, fs: fsspec.AbstractFileSystem | None = None) -> list[dict[str, Any]]:
    """The scoring columns of a Parquet predictions file or folder, ordered by example index."""
    if fs is None:
        fs, path = fsspec.core.url_to_fs(path)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=_SCORED_COLUMNS)
    return sorted(table.to_pylist(), key=lambda row: row["example_index"])


def score_prediction_rows(spec: TaskSpec, rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A task's scores over stored prediction rows; each row's own example index seeds its fallback guess."""
    return spec.summarize((row["example_index"], spec.scoring_row(row)) for row in rows)


def collect_results(evaluation: EvaluationDir, pairs: Iterable[tuple[str, str]]) -> Results:
    """{model: {task: scores}} for the given (model, task) pairs, scored from their prediction files."""
    results: Results = {}
    for model, task in pairs:
        rows = read_prediction_rows(evaluation.path(evaluation.predictions(model, task)), evaluation.fs)
        results.setdefault(model, {})[task] = score_prediction_rows(get_task(task), rows)
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Rendering


def metric_rows(results: Results) -> list[tuple[str, str]]:
    """(task, metric) pairs present in the results, tasks in registry order, metrics in each task's order."""
    tasks = ordered_tasks({task for scores in results.values() for task in scores})
    return [(task, metric) for task in tasks for metric in get_task(task).metrics]


def score_value(results: Results, model: str, task: str, metric: str) -> float | None:
    return results.get(model, {}).get(task, {}).get(metric)


def format_cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def render_markdown(results: Results) -> str:
    """The report table: one row per task metric, one column per model, and per non-base model its delta to base."""
    models = ordered_models(results)
    compared = [model for model in models if model != BASE_MODEL] if BASE_MODEL in results else []
    header = ["Task", "Metric", *models, *(f"Δ {model} vs {BASE_MODEL}" for model in compared)]
    lines = ["# Evaluation report", "", "Scores x100, mean over examples (DESIGN.md section 4, Evaluation).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, metric in metric_rows(results):
        values = [score_value(results, model, task, metric) for model in models]
        base = score_value(results, BASE_MODEL, task, metric)
        deltas = [None if base is None or (v := score_value(results, model, task, metric)) is None else v - base
                  for model in compared]
        cells = [get_task(task).title, metric, *map(format_cell, values),
                 *(format_cell(delta, signed=True) for delta in deltas)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Examples per task (n scored; errors = examples without an answer, scored as wrong):", ""]
    for model in models:
        for task in ordered_tasks(results[model]):
            scores = results[model][task]
            extras = ", ".join(f"{key} {scores[key]}" for key in ("errors", "unscorable", "parse_fallbacks")
                               if scores.get(key))
            lines.append(f"- {model} / {get_task(task).title}: n {scores['n']}" + (f", {extras}" if extras else ""))
    return "\n".join(lines) + "\n"


def render_chart(results: Results) -> bytes:
    """A grouped bar chart (PNG): one group per task metric, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt

    models = ordered_models(results)
    rows = metric_rows(results)
    width = 0.8 / max(len(models), 1)
    figure, axes = plt.subplots(figsize=(max(5.0, 1.2 * len(rows) + 2), 4))
    for position, model in enumerate(models):
        heights = [score_value(results, model, task, metric) or 0.0 for task, metric in rows]
        offsets = [i + (position - (len(models) - 1) / 2) * width for i in range(len(rows))]
        bars = axes.bar(offsets, heights, width, label=model)
        axes.bar_label(bars, fmt="%.1f", fontsize=7)
    axes.set_xticks(range(len(rows)), [f"{get_task(task).title}\n{metric}" for task, metric in rows], fontsize=8)
    axes.set_ylabel("score (x100)")
    axes.set_ylim(0, 100)
    axes.legend()
    axes.set_title(f"Evaluation: {' vs '.join(models)}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def write_report(evaluation: EvaluationDir, results: Results) -> Results:
    """Write report.json, report.md and report.png into the evaluation folder; returns the results."""
    evaluation.fs.makedirs(evaluation.root, exist_ok=True)
    ordered = {model: {task: results[model][task] for task in ordered_tasks(results[model])}
               for model in ordered_models(results)}
    contents = {
        "report.json": json.dumps(ordered, indent=2).encode(),
        "report.md": render_markdown(ordered).encode(),
        "report.png": render_chart(ordered),
    }
    for name, data in contents.items():
        with evaluation.fs.open(evaluation.path(name), "wb") as file:
            file.write(data)
    return ordered


def regenerate_report(run_dir: str) -> Results:
    """Rescore every completed (model, task) of a run directory and rewrite its report files."""
    evaluation = RunDir(run_dir).evaluation()
    pairs = evaluation.completed_pairs()
    if not pairs:
        raise FileNotFoundError(f"no completed evaluation in {run_dir} (looked for {evaluation.url(STATE)})")
    return write_report(evaluation, collect_results(evaluation, pairs))
