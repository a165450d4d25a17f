"""Unit tests of engine.evaluation.score_file (`adapt score`), and the round trip from the runner's predictions."""

from __future__ import annotations

import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.config import BenchmarkConfig, EngineConfig
from engine.evaluation import runner
from engine.evaluation.benchmarks import benchmark_rows, write_table
from engine.evaluation.report import collect_results, read_prediction_rows
from engine.io.run_dir import EvaluationDir
from engine.models.families import get_family
from engine.models.loading import ChatFormat
from engine.evaluation.score_file import score_file
from engine.evaluation.scoring import score_example, score_predictions
from engine.evaluation.tasks import get_task
from engine.models.backends import GenerationResult
from tests.fixtures import png_bytes

OPTIONS = {"A": "pneumothorax", "B": "pleural effusion", "C": "cardiomegaly", "D": "atelectasis"}


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def test_medical_vqa_file(tmp_path):
    records = [{"prediction": "lung", "label": "left lung", "answer_type": "OPEN"},
               {"prediction": "No.", "label": "no", "answer_type": "CLOSED"},
               {"prediction": "yes", "label": "no", "answer_type": "CLOSED"}]
    scores = score_file("slake", write_jsonl(tmp_path / "p.jsonl", records))
    assert scores == {"n": 3, "open_recall": 50.0, "closed_accuracy": 50.0, "n_open": 1, "n_closed": 2}
    assert scores == score_predictions("slake", records)


def test_multiple_choice_file_seeds_fallbacks_by_line_position(tmp_path):
    records = [{"prediction": answer, "label": "B", "options": OPTIONS}
               for answer in ("(B)", "I think C", "no clue", "no clue", "pleural effusion is visible")]
    scores = score_file("pmc_vqa", write_jsonl(tmp_path / "p.jsonl", records))
    assert scores == score_predictions("pmc_vqa", records)
    assert scores["parse_fallbacks"] == 2 and scores["n"] == 5


def test_example_index_field_overrides_the_position(tmp_path):
    row = {"prediction": "no clue", "label": "A", "options": OPTIONS}
    by_index = {}
    for index in range(6):
        path = write_jsonl(tmp_path / f"p{index}.jsonl", [{**row, "example_index": index}])
        by_index[index] = score_file("pmc_vqa", path)["accuracy"]
    assert by_index == {index: score_example("pmc_vqa", row, index)["accuracy"] for index in range(6)}
    assert set(by_index.values()) == {0.0, 100.0}


def test_labels_are_read_like_benchmark_records(tmp_path):
    food101 = [{"prediction": "This is apple pie.", "label": "apple_pie"},
               {"prediction": "(1)", "label": "baby back ribs"}]
    assert score_file("food101", write_jsonl(tmp_path / "f.jsonl", food101))["accuracy"] == 100.0
    foodseg = [{"prediction": "rice and egg tart", "label": ["egg tart", "rice"]}]
    assert score_file("foodseg103", write_jsonl(tmp_path / "s.jsonl", foodseg))["f1"] == 100.0
    unknown = [{"prediction": "x", "label": "not a dish"}]
    assert score_file("food101", write_jsonl(tmp_path / "u.jsonl", unknown)) == {
        "n": 0, "accuracy": None, "parse_fallbacks": 0, "unscorable": 1}


def test_scores_are_written_to_out_path(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prediction": "a soup", "label": "a tomato soup"}])
    scores = score_file("recipe1m", path, out_path=str(tmp_path / "out" / "scores.json"))
    assert json.loads((tmp_path / "out" / "scores.json").read_text()) == scores
    assert set(scores) == {"n", "rouge_l"}


def test_malformed_line_names_its_number(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prediction": "a", "label": "b"}\n{"prediction": \n')
    with pytest.raises(ValueError, match="line 2: not JSON"):
        score_file("recipe1m", str(path))


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task"):
        score_file("mmmu", "p.jsonl")


# ---------------------------------------------------------------------------------------------------------------------
# Round trip: what the runner writes, `adapt score` rescores to the report's numbers.


class ScriptedBackend:
    """Answers from a script keyed by question text; a question mapped to None fails."""

    def __init__(self, answers: dict[str, str | None]):
        self._answers = answers

    def generate(self, requests):
        results = []
        for request in requests:
            answer = next(text for question, text in self._answers.items() if question in request.prompt)
            results.append(GenerationResult(text=answer) if answer is not None else GenerationResult(error="boom"))
        return results


def test_runner_predictions_round_trip_through_score_file(tmp_path, monkeypatch):
    questions = {"Q0": "(B)", "Q1": "no clue", "Q2": "cardiomegaly", "Q3": None, "Q4": "no clue", "Q5": "(A)"}
    records = [{"id": f"r{i}", "image": png_bytes() if i != 4 else b"broken", "input": question, "label": "B",
                **OPTIONS} for i, question in enumerate(questions)]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "pmc.parquet")
    spec = get_task("pmc_vqa")
    table_dir = tmp_path / "table"
    write_table(benchmark_rows(spec, BenchmarkConfig(task="pmc_vqa", path=str(tmp_path / "pmc.parquet"))),
                str(table_dir), fsspec.filesystem("file"))

    monkeypatch.setattr(runner, "create_backend", lambda engine: ScriptedBackend(questions))
    # No checkpoint behind "org/model": the family's format as written.
    monkeypatch.setattr(runner, "engine_chat_format", lambda engine: ChatFormat(get_family(engine.family), ()))
    engine = EngineConfig(model="org/model", family="qwen2-vl", backend="transformers", device="cpu")
    predict = runner.Predict(engine, ["pmc_vqa"], "base")
    table = pq.read_table(table_dir)
    predictions = tmp_path / "evaluation" / "predictions" / "base" / "task=pmc_vqa"
    predictions.mkdir(parents=True)
    # Two batches written as two files, the later batch first: file order must not matter.
    for position, batch in enumerate((table.slice(3), table.slice(0, 3))):
        pq.write_table(predict(batch), predictions / f"part-{position}.parquet")

    written = read_prediction_rows(str(predictions))
    assert [row["error"] and row["error"].split(":")[0] for row in written] == [
        None, None, None, "generation_failed", "not_an_image", None]
    report = collect_results(EvaluationDir(str(tmp_path)), [("base", "pmc_vqa")])["base"]["pmc_vqa"]
    assert score_file("pmc_vqa", str(predictions)) == report
    assert report["n"] == 6 and report["errors"] == 2

    exported = [{"prediction": row["prediction"], "label": row["label"], "options": json.loads(row["options"]),
                 "example_index": row["example_index"]} for row in written]
    rescored = score_file("pmc_vqa", write_jsonl(tmp_path / "exported.jsonl", exported))
    assert rescored == {key: value for key, value in report.items() if key not in ("errors", "error_pct")}
    stored = [json.loads(row["scores"])["accuracy"] for row in pq.read_table(predictions).to_pylist()]
    assert sum(stored) / len(stored) == report["accuracy"]
