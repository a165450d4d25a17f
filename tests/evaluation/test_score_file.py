"""Unit tests of engine.evaluation.score_file (`adapt score`), and the round trip from the runner's predictions."""

from __future__ import annotations

import asyncio
import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.cli import main
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


# ---------------------------------------------------------------------------------------------------------------------
# `adapt score` against the official formulas: for each of the paper's biomedical and food tasks, hand-made predictions
# whose scores were worked out by hand from the released evaluation code's formulas, its quirks included.

FEMUR_OPTIONS = {"A": "femur", "B": "tibia", "C": "fibula", "D": ""}

OFFICIAL_CASES = {
    "vqa_rad": (
        [
            # "im" stays "im" (the table's key is "Im"), the label stays "i'm": nothing shared -> 0.
            {"prediction": "im", "label": "i'm", "answer_type": "OPEN"},
            # 64 periods: 32 go in the task's normalization, 32 in calculate_f1score's -> "effusion" -> 100.
            {"prediction": "effusion" + "." * 64, "label": "effusion", "answer_type": "OPEN"},
            # 70 periods: 6 survive both passes -> "effusion......" -> 0.
            {"prediction": "effusion" + "." * 70, "label": "effusion", "answer_type": "OPEN"},
            # Empty label: calculate_f1score returns 0 -> 0, counted.
            {"prediction": "left lung", "label": "", "answer_type": "OPEN"},
            # "no it is not" says "no" and contains "no" -> 100.
            {"prediction": "No, it is not.", "label": "no", "answer_type": "CLOSED"},
            # Empty label: "yes" says yes, and "" is in it -> 100.
            {"prediction": "yes", "label": "", "answer_type": "CLOSED"},
        ],
        # open (0 + 100 + 0 + 0) / 4 = 25; closed (100 + 100) / 2 = 100.
        {"n": 6, "open_recall": 25.0, "closed_accuracy": 100.0, "n_open": 4, "n_closed": 2},
    ),
    "slake": (
        [
            # "notve" -> "not've", the label's form -> 100.
            {"prediction": "notve", "label": "not've", "answer_type": "OPEN"},
            # "couldntve" is not in the table -> no shared word with "couldn't've" -> 0.
            {"prediction": "The answer is couldntve", "label": "couldn't've", "answer_type": "OPEN"},
            # "," before a space is deleted, the final "." too -> {left, lung, upper, lobe}; label {right, upper, lobe}:
            # tp 2, fn 1 -> 200/3.
            {"prediction": "Left lung, upper lobe.", "label": "right upper lobe", "answer_type": "OPEN"},
            # Closed answers are normalized once: 32 periods go, "ye.s" stays -> neither "yes" nor "no" -> 0.
            {"prediction": "." * 32 + " ye.s", "label": "yes", "answer_type": "CLOSED"},
            # "i know" contains "no" twice over -> 100.
            {"prediction": "I know", "label": "no", "answer_type": "CLOSED"},
            # Type "open" is neither OPEN nor CLOSED: in neither mean (unscorable here).
            {"prediction": "liver", "label": "liver", "answer_type": "open"},
        ],
        # open (100 + 0 + 200/3) / 3 = 500/9; closed (0 + 100) / 2 = 50.
        {"n": 5, "open_recall": pytest.approx(500 / 9), "closed_accuracy": 50.0, "n_open": 3, "n_closed": 2,
         "unscorable": 1},
    ),
    "pathvqa": (
        [
            # Pass 1 deletes the 32 leading periods and keeps "one."; pass 2 makes it "one" -> "1" = label -> 100.
            {"prediction": "." * 32 + " one.", "label": "1", "answer_type": "OPEN"},
            # "1,000" is digit-comma-digit: every mark is deleted -> {1000, cellsmm}; label {1000, cells}: tp 1, fn 1
            # -> 50.
            {"prediction": "1,000 cells/mm", "label": "1000 cells", "answer_type": "OPEN"},
            {"prediction": "Yes.", "label": "yes", "answer_type": "CLOSED"},  # 100
            {"prediction": None, "label": "yes", "answer_type": "CLOSED"},  # a failed request: an empty answer -> 0
        ],
        # open (100 + 50) / 2 = 75; closed (100 + 0) / 2 = 50.
        {"n": 4, "open_recall": 75.0, "closed_accuracy": 50.0, "n_open": 2, "n_closed": 2},
    ),
    "pmc_vqa": (
        [
            # "B.:" -> " B. ": no " B ", 4 characters -> guess Random(0).choice("ABCD") = "D" != B -> 0, a fallback.
            {"prediction": "B.:", "label": "B", "options": OPTIONS},
            # The empty option D wins the text stage over "femur" -> D != A -> 0.
            {"prediction": "The femur is fractured", "label": "A", "options": FEMUR_OPTIONS},
            {"prediction": "(C)", "label": "C", "options": OPTIONS},  # 100
            # "B:." loses "." then ":" -> " The answer is B " -> " B " -> 100.
            {"prediction": "The answer is B:.", "label": "B", "options": OPTIONS},
            {"prediction": "(A)", "label": "", "options": OPTIONS},  # empty label: A != "" -> 0, counted
        ],
        # (0 + 0 + 100 + 100 + 0) / 5 = 40.
        {"n": 5, "accuracy": 40.0, "parse_fallbacks": 1},
    ),
    "recipe1m": (
        [
            # rouge 1.0.1 counts distinct words: LCS {the, cat, on, mat} = 4 of 5 on each side -> P = R = 0.8 -> 80.
            {"prediction": "the cat sat on the mat", "label": "the cat is on the mat"},
            # hyp 2 words, ref 4, LCS 2: P = 1, R = 1/2 -> F = 2PR/(P+R) = 2/3 -> 200/3.
            {"prediction": "the cat", "label": "the cat sat down"},
            {"prediction": "a soup", "label": ""},  # the package raises on an empty reference -> 0, counted
            {"prediction": None, "label": "soup"},  # 0
        ],
        # (80 + 200/3 + 0 + 0) / 4 = 440/12.
        {"n": 4, "rouge_l": pytest.approx(440 / 12, rel=1e-6)},
    ),
    "food101": (
        [
            {"prediction": "This is cheesecake.", "label": "cheesecake"},  # "cheesecake" = option 16 = label -> 100
            {"prediction": "(17)", "label": "cheese_plate"},  # cheese plate is 17 -> 100
            {"prediction": "16", "label": "cheese plate"},  # " 16 " -> 16 != 17 -> 0
            # By text: "apple pie" last at 13, "beef tartare" at 28 -> the later one, 4 != 0 -> 0.
            {"prediction": "The dish is apple pie, not beef tartare.", "label": "apple_pie"},
            {"prediction": "(0)", "label": ""},  # names no class: the official code stops; unscorable here
        ],
        # (100 + 100 + 0 + 0) / 4 = 50.
        {"n": 4, "accuracy": 50.0, "parse_fallbacks": 0, "unscorable": 1},
    ),
    "foodseg103": (
        [
            # "french fries" (3) and "egg tart" (2) are found and deleted, so "egg" is not; label {2, 1}: tp 1, fp 1,
            # fn 1 -> 2/(2+1+1) = 50.
            {"prediction": "I see egg tart and French fries", "label": ["egg tart", "candy"]},
            {"prediction": "nothing", "label": []},  # nothing on either side: 0/0 -> 100
            {"prediction": "candy", "label": ""},  # "" is no class: pred {1}, label {}: fp 1 -> 0
            # "other ingredients" (103) is not parsed, so it is not deleted and "candy" never forms -> tp 0, fn 1 -> 0.
            {"prediction": "cother ingredientsandy", "label": ["candy"]},
        ],
        # (50 + 100 + 0 + 0) / 4 = 37.5.
        {"n": 4, "f1": 37.5},
    ),
    "nutrition5k": (
        [
            # Label "deprecated" -> its last id 469; the parser records its first, 230 -> tp 0, fn 1 -> 0.
            {"prediction": "deprecated", "label": ["deprecated"]},
            # "potatoes", then "steak" are found and deleted ("tea" inside "steak" goes with it); label {steak, bacon}:
            # tp 1, fn 1 -> 50.
            {"prediction": "Steak with potatoes", "label": ["steak", "bacon"]},
            {"prediction": "bacon", "label": []},  # empty label: tp + fn = 0 -> 100
            {"prediction": None, "label": ["bacon"]},  # 0
        ],
        # (0 + 50 + 100 + 0) / 4 = 37.5.
        {"n": 4, "recall": 37.5},
    ),
}


@pytest.mark.parametrize("task", sorted(OFFICIAL_CASES))
def test_adapt_score_agrees_with_the_official_formulas(task, tmp_path, capsys):
    records, expected = OFFICIAL_CASES[task]
    predictions, out = write_jsonl(tmp_path / "p.jsonl", records), tmp_path / "scores.json"
    assert main(["score", "--task", task, "--predictions", predictions, "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == expected


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

    async def agenerate(self, requests):
        return self.generate(requests)


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
        pq.write_table(asyncio.run(predict(batch)), predictions / f"part-{position}.parquet")

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
