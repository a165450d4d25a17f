"""The synthesis steps on working rows, with scripted model answers: the release's defaults (strict parse, exact-"yes"
judge at temperature 0, pairs without a task dropped, the record's own caption instruction) and each switch."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from engine.config import EngineConfig, FilterConfig, RunConfig
from engine.models.backends import GenerationResult
from engine.synthesis import judge, outputs, synthesizer
from engine.synthesis.examples import BuildExamples
from engine.synthesis.parsing import NO_QUESTION_UNDER_BOTH_HINTS
from engine.synthesis.rows import WORK_SCHEMA, row_seed
from engine.synthesis.templates import FORWARD
from tests.fixtures import png_bytes

EOT, USER = "<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\n"
ASSISTANT = "<|start_header_id|>assistant<|end_header_id|>\n\n"
WELL_FORMED = (f"Answer with a precise response.\nWhat colour is it?{EOT}{ASSISTANT}Red{EOT}{USER}"
               f"Answer with an informative response.\nWhat colour is it?{EOT}{ASSISTANT}The square is filled with "
               f"a bright red.{EOT}")
LOWER_CASE_REPEAT = WELL_FORMED.replace("informative response.\nWhat colour", "informative response.\nwhat colour")


class ScriptedBackend:
    """Answers request i with texts[i] and keeps the requests."""

    def __init__(self, texts: list[str | None]):
        self.texts, self.requests = texts, []

    def generate(self, requests):
        self.requests += requests
        return [GenerationResult(text=text, error=None if text is not None else "boom", output_tokens=3)
                for text in self.texts[len(self.requests) - len(requests):len(self.requests)]]


def engine(family: str) -> EngineConfig:
    return EngineConfig(model="org/model", family=family, backend="transformers", device="cpu")


def rows(count: int, **columns) -> list[dict]:
    base = {name: None for name in WORK_SCHEMA.names}
    return [base | {"row_key": f"s:{index}", "id": f"r{index}", "image": png_bytes(size=32),
                    "caption": f" Caption {index}.\n", **columns} for index in range(count)]


@pytest.fixture
def scripted(monkeypatch):
    def install(module, texts):
        backend = ScriptedBackend(texts)
        monkeypatch.setattr(module, "create_backend", lambda config: backend)
        return backend
    return install


@pytest.fixture
def llava_synthesizer(monkeypatch):
    """ModelSynthesizer without a checkpoint: the chat format as the family defines it."""
    monkeypatch.setattr(synthesizer, "engine_chat_format", lambda config, family: type("F", (), {"family": family}))
    return lambda lenient: synthesizer.ModelSynthesizer(engine("llava-llama3"), "adamllm", lenient)


@pytest.mark.parametrize(("lenient", "expected"), [(False, [True, False]), (True, [True, True])])
def test_the_synthesizer_parses_strictly_unless_lenient(scripted, llava_synthesizer, lenient, expected):
    backend = scripted(synthesizer, [WELL_FORMED, LOWER_CASE_REPEAT])
    batch = rows(2)
    llava_synthesizer(lenient).process(batch)
    assert [row["question"] is not None for row in batch] == expected
    if not lenient:
        assert batch[1]["task_reason"] == NO_QUESTION_UNDER_BOTH_HINTS
    # The caption reaches the prompt verbatim, its spaces and line break included.
    assert f"{ASSISTANT} Caption 0.\n{EOT}" in backend.requests[0].prompt


def judged(scripted, monkeypatch, outputs: list[str], lenient: bool) -> tuple[list[dict], ScriptedBackend]:
    monkeypatch.setattr(judge, "raw_prompt_begin", lambda config: "")
    backend = scripted(judge, outputs)
    batch = rows(len(outputs), question="Q?", precise="Red", informative="It is red.")
    judge.LLMJudge(engine("text"), lenient).process(batch)
    return batch, backend


def test_the_judge_keeps_only_an_exact_yes_and_decodes_greedily(scripted, monkeypatch):
    batch, backend = judged(scripted, monkeypatch, [" Yes", "Yes.", " No", " yes it"], lenient=False)
    assert [row["kept"] for row in batch] == [True, False, False, False]
    assert [row["consistency"] for row in batch] == ["yes", None, "no", None]
    assert [row["drop_reason"] for row in batch] == [None, "unparseable_judge_output", "inconsistent",
                                                     "unparseable_judge_output"]
    assert {request.temperature for request in backend.requests} == {0.0}
    assert {request.max_tokens for request in backend.requests} == {2}


def test_the_lenient_judge_reads_the_first_label_word(scripted, monkeypatch):
    batch, _ = judged(scripted, monkeypatch, [" Yes", "Yes.", " No", " yes it"], lenient=True)
    assert [row["kept"] for row in batch] == [True, True, False, True]


def build(batch: list[dict], keep_pairs_without_task: bool = False) -> list[dict]:
    BuildExamples(seed=5, filter_enabled=True, keep_pairs_without_task=keep_pairs_without_task).process(batch)
    return batch


def test_a_pair_without_a_task_is_dropped_whole_unless_kept():
    no_task = rows(1, task_reason="generation_failed")
    (row,) = build(no_task)
    assert row["messages"] is None and row["kind"] is None and row["seed"] == row_seed(5, "r0")
    (row,) = build(rows(1, task_reason="generation_failed"), keep_pairs_without_task=True)
    assert row["kind"] == "caption" and row["messages"][1]["content"] == " Caption 0.\n"


def test_a_task_the_judge_dropped_keeps_its_caption_example():
    (row,) = build(rows(1, question="Q?", precise="Red", informative="It is red.", kept=False))
    assert row["kind"] == "caption" and row["task_kind"] is None and row["compose_rule"] is None


def test_a_kept_task_records_what_compose_made_of_it():
    (row,) = build(rows(1, question="What colour is it?", precise="Red", informative="It is red.", kept=True))
    assert row["kind"] == "caption+synthetic"
    assert row["compose_rule"] == "cot_template" and row["task_kind"] is not None
    assert len(row["messages"]) == 4


def published(batch: list[dict]) -> tuple[list[dict], list[dict], dict]:
    """Finished rows as the pipeline publishes them: tasks/, instructions/ and the manifest's counts."""
    table = pa.Table.from_pylist(batch, schema=WORK_SCHEMA)
    counts = outputs.accounting(table.select(outputs.ACCOUNTING_COLUMNS), set())
    return outputs.to_tasks(table).to_pylist(), outputs.to_examples(table).to_pylist(), counts


def test_a_rule_based_synthesis_writes_non_forward_kinds_into_tasks_and_instructions():
    batch = rows(40)
    synthesizer.RuleBasedSynthesizer(seed=5).process(batch)
    judge.LexicalJudge().process(batch)
    tasks, examples, counts = published(build(batch))
    # Every caption gives a task the lexical judge keeps, and none of its last sentences concludes, so every task is
    # composed from the chain-of-thought list, where 43% of the patterns are not forward: some of 40 are not.
    assert counts["rows_out"] == counts["tasks_kept"] == 40 and counts["compose_rules"] == {"cot_template": 40}
    kinds = {task["source_id"]: task["task_kind"] for task in tasks}
    assert {example["id"]: example["task_kind"] for example in examples} == kinds
    assert set(kinds.values()) - {FORWARD}
    assert counts["task_kinds"] == {kind: list(kinds.values()).count(kind) for kind in set(kinds.values())}
    by_id = {row["id"]: row for row in batch}
    for example in examples:
        if example["task_kind"].startswith("question_"):  # the assistant writes the question, the user does not ask it
            user, assistant = (message["content"] for message in example["messages"][2:])
            question = by_id[example["id"]]["question"]
            assert question in assistant and question not in user


def test_the_manifest_counts_the_pairs_dropped_for_having_no_task(scripted, llava_synthesizer):
    # The rule-based synthesizer always finds a task in a caption that passed validation, so the drops come from the
    # model route: one well-formed output, one that asks no question under both hints, one failed request.
    scripted(synthesizer, [WELL_FORMED, LOWER_CASE_REPEAT, None])
    batch = rows(3)
    llava_synthesizer(False).process(batch)
    judge.LexicalJudge().process(batch)
    tasks, examples, counts = published(build(batch))
    assert counts["rows_dropped"] == {NO_QUESTION_UNDER_BOTH_HINTS: 1, synthesizer.GENERATION_FAILED: 1}
    assert counts["rows_in"] == 3 and counts["rows_out"] == 1
    assert [task["source_id"] for task in tasks] == [example["id"] for example in examples] == ["r0"]


@pytest.mark.parametrize(("instruction", "user_turn"), [
    (None, "<image>\nDescribe the image."),
    ("<image>Generate a recipe for this delicious food.", "<image>\nGenerate a recipe for this delicious food."),
    ("<image>\nWhat is in the bowl?", "<image>\nWhat is in the bowl?"),
    ("List the ingredients.\n<image>", "<image>\nList the ingredients.\n"),
    ("<image>", "<image>\n"),
])
def test_the_caption_task_asks_the_records_own_instruction(instruction, user_turn):
    (row,) = build(rows(1, instruction=instruction, task_reason="x"), keep_pairs_without_task=True)
    assert row["messages"][0] == {"role": "user", "content": user_turn}
    assert row["messages"][1] == {"role": "assistant", "content": " Caption 0.\n"}


def test_the_release_is_the_default_and_each_departure_a_switch():
    config = RunConfig.model_validate({"output_dir": "/tmp/x", "data": {"path": "/tmp", "format": "jsonl"},
                                       "synthesis": {"synthesizer": "rule_based"}, "filter": {"judge": "lexical"}})
    assert (config.synthesis.lenient_parse, config.synthesis.keep_pairs_without_task) == (False, False)
    assert config.filter.lenient_label is False


def test_the_judge_refuses_a_sampling_temperature():
    judge_engine = {"model": "org/judge", "family": "text", "backend": "transformers", "device": "cpu"}
    assert FilterConfig.model_validate({"engine": judge_engine}).engine.temperature == 0
    with pytest.raises(ValidationError, match="decodes greedily"):
        FilterConfig.model_validate({"engine": judge_engine | {"temperature": 0.7}})
