"""The synthesize step: one candidate task per usable row, from the synthesizer model or the rule-based baseline.

ModelSynthesizer holds an inference engine, so Ray runs it as an actor pool; the constructor loads the model once per
actor. A failed request or an output with no usable task leaves the row without a task and says why (`task_reason`);
compose then drops the row, as the release drops such pairs (or keeps its caption example: `keep_pairs_without_task`).
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
from PIL import Image

from engine.config import EngineConfig
from engine.models.backends import GenerationRequest, GenerationResult, create_backend
from engine.models.loading import engine_chat_format
from engine.runtime import EngineStep
from engine.synthesis.parsing import ParseResult, parse_synthesizer_output
from engine.synthesis.prompts import MAX_NEW_TOKENS, PROMPT_VERSION, synthesizer_prompt, synthesizer_stop
from engine.synthesis.rows import RowStep, is_usable, row_seed, work_table
from engine.synthesis.rule_based import rule_based_task

ADAMLLM_FAMILY = "llava-llama3"  # the released synthesizer is LLaVA-v1.6-Llama3-8B
RULE_BASED = "rule_based"
GENERATION_FAILED = "generation_failed"


def _record_parse(row: dict[str, Any], result: ParseResult) -> None:
    if result.tasks:
        task = result.tasks[0]
        row.update(question=task.question, precise=task.precise, informative=task.informative)
    else:
        row.update(task_reason=result.reason)


class ModelSynthesizer(EngineStep):
    def __init__(self, engine: EngineConfig, prompt_format: str, lenient_parse: bool = False):
        family = ADAMLLM_FAMILY if prompt_format == "adamllm" else engine.family
        self._family = engine_chat_format(engine, family).family
        self._engine = engine
        self._lenient_parse = lenient_parse
        self._backend = create_backend(engine)
        self._prompt_version = PROMPT_VERSION if prompt_format == "adamllm" else f"{PROMPT_VERSION}+{family}"

    def _request(self, row: dict[str, Any]) -> GenerationRequest:
        return GenerationRequest(
            prompt=synthesizer_prompt(row["caption"], self._family),
            images=[Image.open(io.BytesIO(row["image"]))],
            max_tokens=self._engine.max_tokens or MAX_NEW_TOKENS,
            temperature=self._engine.temperature,
            stop=list(synthesizer_stop(self._family)),
            keep_special_tokens=True,  # turns are split on the family's special tokens
            stop_at_eos=False,  # it writes several turns: only the end of text ends it
            key=row["id"],
        )

    def requests(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], GenerationRequest]]:
        return [(row, self._request(row)) for row in rows if is_usable(row)]

    def record(self, row: dict[str, Any], result: GenerationResult) -> None:
        row.update(synthesizer=self._engine.model, prompt_version=self._prompt_version)
        row["output_tokens"] = result.output_tokens
        if result.error is not None:
            row.update(task_reason=GENERATION_FAILED, task_detail=result.error)
        else:
            _record_parse(row, parse_synthesizer_output(result.text, self._family, self._lenient_parse))

    def output(self, rows: list[dict[str, Any]]) -> pa.Table:
        return work_table(rows)


class RuleBasedSynthesizer(RowStep):
    """The paper's manual-rule baseline: a templated task from the caption alone (no model, runs as plain tasks)."""

    def __init__(self, seed: int):
        self._seed = seed

    def process(self, rows: list[dict[str, Any]]) -> None:
        for row in filter(is_usable, rows):
            row.update(synthesizer=RULE_BASED, prompt_version=RULE_BASED)
            _record_parse(row, rule_based_task(row["caption"], row_seed(self._seed, row["id"])))
