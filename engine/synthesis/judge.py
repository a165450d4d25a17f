"""The filter step: a judge labels each candidate task; only consistent ones are kept (see consistency.py).

LLMJudge asks a text LLM (an actor pool); LexicalJudge is the model-free heuristic. A failed judge request drops the
task with reason `judge_failed` (the row keeps its caption example): an unjudged task never reaches training.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from engine.config import EngineConfig
from engine.models.backends import GenerationRequest, GenerationResult, create_backend
from engine.models.loading import raw_prompt_begin
from engine.runtime import EngineStep
from engine.synthesis.consistency import (
    JUDGE_MAX_TOKENS,
    JUDGE_TEMPERATURE,
    Verdict,
    consistency_prompt,
    lexical_label,
    parse_label,
    verdict,
)
from engine.synthesis.parsing import SynthesizedTask
from engine.synthesis.rows import RowStep, has_task, work_table

LEXICAL_JUDGE = "lexical"
JUDGE_FAILED = "judge_failed"


def _task(row: dict[str, Any]) -> SynthesizedTask:
    return SynthesizedTask(question=row["question"], precise=row["precise"], informative=row["informative"])


def _record(row: dict[str, Any], judge: str, outcome: Verdict) -> None:
    row.update(filter=judge, consistency=outcome.label, kept=outcome.kept, drop_reason=outcome.reason)


class LLMJudge(EngineStep):
    def __init__(self, engine: EngineConfig, lenient_label: bool = False):
        self._engine = engine
        self._lenient_label = lenient_label
        self._begin = raw_prompt_begin(engine)
        self._backend = create_backend(engine)

    def requests(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], GenerationRequest]]:
        return [
            (row, GenerationRequest(
                prompt=self._begin + consistency_prompt(_task(row)),
                images=[],
                max_tokens=min(self._engine.max_tokens or JUDGE_MAX_TOKENS, JUDGE_MAX_TOKENS),
                temperature=JUDGE_TEMPERATURE,  # greedy, as released (the config refuses another temperature)
                key=row["id"],
            ))
            for row in rows if has_task(row)
        ]

    def record(self, row: dict[str, Any], result: GenerationResult) -> None:
        if result.error is not None:
            row.update(filter=self._engine.model, kept=False, drop_reason=JUDGE_FAILED)
        else:
            _record(row, self._engine.model, verdict(parse_label(result.text, self._lenient_label)))

    def output(self, rows: list[dict[str, Any]]) -> pa.Table:
        return work_table(rows)


class LexicalJudge(RowStep):
    def process(self, rows: list[dict[str, Any]]) -> None:
        for row in filter(has_task, rows):
            _record(row, LEXICAL_JUDGE, verdict(lexical_label(_task(row))))
