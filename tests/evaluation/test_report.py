"""Unit tests of engine.evaluation.report: scores from prediction files, the three report files, regeneration."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.evaluation.report import (
    collect_results,
    ordered_models,
    regenerate_report,
    render_markdown,
    write_report,
)
from engine.io.run_dir import EvaluationDir
from engine.records import PREDICTION_SCHEMA

# (prediction, label, answer_type) of a four-question VQA benchmark
BASE = [("no idea", "lung", "OPEN"), ("left lung", "left lung", "OPEN"), ("no", "yes", "CLOSED"),
        ("no", "no", "CLOSED")]
ADAPTED = [("lung", "lung", "OPEN"), ("left lung", "left lung", "OPEN"), ("yes", "yes", "CLOSED"),
           (None, "no", "CLOSED")]


def write_predictions(run, model: str, task: str, answers, status: str = "complete", files: int = 2) -> None:
    """Prediction files as the runner writes them (rows split over files, not in index order) and a state file."""
    folder = run / "evaluation" / "predictions" / model / f"task={task}"
    folder.mkdir(parents=True)
    rows = [{"task": task, "example_id": f"q{i}", "model": model, "prompt": "p", "prediction": prediction,
             "label": label, "answer_type": answer_type, "scores": None, "example_index": i, "options": None,
             "error": None if prediction is not None else "generation_failed: boom"}
            for i, (prediction, label, answer_type) in enumerate(answers)]
    for part in range(files):
        chunk = rows[part::files][::-1]
        pq.write_table(pa.Table.from_pylist(chunk, schema=PREDICTION_SCHEMA), folder / f"part-{part}.parquet")
    state = run / "evaluation" / "_state" / model / f"{task}.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"status": status, "fingerprint": "x"}))


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    write_predictions(run, "base", "demo_vqa", BASE)
    write_predictions(run, "adapted", "demo_vqa", ADAPTED)
    return run


def test_scores_come_from_the_prediction_files(run):
    results = collect_results(EvaluationDir(str(run)), [("base", "demo_vqa"), ("adapted", "demo_vqa")])
    assert results["base"]["demo_vqa"] == {"n": 4, "open_recall": 50.0, "closed_accuracy": 50.0, "n_open": 2,
                                           "n_closed": 2}
    assert results["adapted"]["demo_vqa"] == {"n": 4, "open_recall": 100.0, "closed_accuracy": 50.0, "n_open": 2,
                                              "n_closed": 2, "errors": 1, "error_pct": 25.0}


def test_report_files(run):
    eval_dir = run / "evaluation"
    evaluation = EvaluationDir(str(run))
    results = write_report(evaluation, collect_results(evaluation, [("adapted", "demo_vqa"), ("base", "demo_vqa")]))
    assert list(json.loads((eval_dir / "report.json").read_text())) == ["base", "adapted"]
    assert json.loads((eval_dir / "report.json").read_text()) == results
    markdown = (eval_dir / "report.md").read_text()
    assert "| Task | Metric | base | adapted | Δ adapted vs base |" in markdown
    assert "| Demo VQA | open_recall | 50.00 | 100.00 | +50.00 |" in markdown
    assert "| Demo VQA | closed_accuracy | 50.00 | 50.00 | +0.00 |" in markdown
    assert "- adapted / Demo VQA: n 4, errors 1" in markdown
    assert (eval_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_without_base_has_no_delta_and_missing_metrics_show_a_dash():
    markdown = render_markdown({"adapted": {"demo_vqa": {"n": 1, "open_recall": None, "closed_accuracy": 100.0}}})
    assert "Δ" not in markdown
    assert "| Demo VQA | open_recall | – |" in markdown


def test_model_order_puts_base_and_adapted_first():
    assert ordered_models(["zeta", "adapted", "alpha", "base"]) == ["base", "adapted", "alpha", "zeta"]


def test_regenerate_report_rescores_completed_pairs_only(run):
    write_predictions(run, "other", "demo_vqa", BASE, status="running")
    results = regenerate_report(str(run))
    assert list(results) == ["base", "adapted"]
    assert (run / "evaluation" / "report.md").exists() and (run / "evaluation" / "report.png").exists()


def test_regenerate_report_without_an_evaluation(tmp_path):
    with pytest.raises(FileNotFoundError, match="no completed evaluation"):
        regenerate_report(str(tmp_path))
