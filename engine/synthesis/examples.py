"""The compose step: each usable row becomes one training conversation, or none, as in AdaMLLM's release.

The caption task comes first: the record's own instruction (its `<image>` placeholders removed, as the release removes
them; "Describe the image." when the record has none) -> the caption, verbatim. A kept synthetic task follows as a
second exchange, both turns written by compose.py. The order is canonical here; the training mixture decides per example
whether the caption turn goes first or last (single-stage) or splits the two (two-stage).

A row whose synthesizer output gave no task (``task_reason`` says why) gives no example, as released, unless
``keep_pairs_without_task``: it is counted as dropped under that reason. A task the judge did not keep still leaves the
caption example (released behaviour too).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from engine.models.families import IMAGE_PLACEHOLDER
from engine.synthesis.compose import Composition, compose
from engine.synthesis.parsing import SynthesizedTask
from engine.synthesis.prompts import CAPTION_INSTRUCTION
from engine.synthesis.rows import RowStep, has_task, is_usable, row_seed

CAPTION_PROMPT = f"{IMAGE_PLACEHOLDER}\n{CAPTION_INSTRUCTION}"


def caption_instruction(instruction: str | None) -> str:
    """The caption task's request: the record's own without its placeholders (the image is placed by the caller), or
    the default."""
    if instruction is None:
        return CAPTION_INSTRUCTION
    return instruction.replace(f"{IMAGE_PLACEHOLDER}\n", "").replace(IMAGE_PLACEHOLDER, "")


def conversation(caption: str, instruction: str | None,
                 composition: Composition | None) -> tuple[list[dict[str, str]], str]:
    """Messages and kind of one example: the caption exchange, then the composed synthetic exchange if any."""
    messages = [
        {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{caption_instruction(instruction)}"},
        {"role": "assistant", "content": caption},
    ]
    if composition is None:
        return messages, "caption"
    messages += [{"role": "user", "content": composition.user}, {"role": "assistant", "content": composition.response}]
    return messages, "caption+synthetic"


def _kept_task(row: dict[str, Any]) -> SynthesizedTask | None:
    if not (has_task(row) and row["kept"]):
        return None
    return SynthesizedTask(question=row["question"], precise=row["precise"], informative=row["informative"])


class BuildExamples(RowStep):
    def __init__(self, seed: int, filter_enabled: bool, keep_pairs_without_task: bool = False):
        self._seed = seed
        self._filter_enabled = filter_enabled
        self._keep_pairs_without_task = keep_pairs_without_task

    def process(self, rows: list[dict[str, Any]]) -> None:
        created_at = datetime.now(timezone.utc)
        for row in filter(is_usable, rows):
            seed = row_seed(self._seed, row["id"])
            row.update(seed=seed, created_at=created_at)
            if has_task(row) and not self._filter_enabled:
                row["kept"] = True  # no filter: every parsed task is used, its consistency stays unjudged
            if not has_task(row) and not self._keep_pairs_without_task:
                continue  # dropped whole: no messages (outputs.accounting counts it under its task_reason)
            task = _kept_task(row)
            composition = compose(task, seed) if task else None
            row["messages"], row["kind"] = conversation(row["caption"], row["instruction"], composition)
            if composition:
                row.update(compose_rule=composition.rule, task_kind=composition.kind)
