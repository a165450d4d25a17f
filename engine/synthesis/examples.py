"""The compose step: each usable row becomes one training conversation.

The caption task comes first ("<image>\\nDescribe the image." -> caption); a kept synthetic task follows as a second
exchange whose answer is the chain of thought from compose.py. The order is canonical here; the training mixture
decides per example whether the caption turn goes first or last (single-stage) or splits the two (two-stage).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from engine.models.families import IMAGE_PLACEHOLDER
from engine.synthesis.compose import compose
from engine.synthesis.parsing import SynthesizedTask
from engine.synthesis.prompts import CAPTION_INSTRUCTION
from engine.synthesis.rows import RowStep, has_task, is_usable, row_seed

CAPTION_PROMPT = f"{IMAGE_PLACEHOLDER}\n{CAPTION_INSTRUCTION}"


def conversation(caption: str, task: SynthesizedTask | None, seed: int) -> tuple[list[dict[str, str]], str]:
    """Messages and kind of one example: the caption exchange, then the synthetic one when there is a kept task."""
    messages = [{"role": "user", "content": CAPTION_PROMPT}, {"role": "assistant", "content": caption}]
    if task is None:
        return messages, "caption"
    messages += [
        {"role": "user", "content": task.question},
        {"role": "assistant", "content": compose(task, seed).response},
    ]
    return messages, "caption+synthetic"


class BuildExamples(RowStep):
    def __init__(self, run_seed: int, filter_enabled: bool):
        self._run_seed = run_seed
        self._filter_enabled = filter_enabled

    def process(self, rows: list[dict[str, Any]]) -> None:
        created_at = datetime.now(timezone.utc)
        for row in filter(is_usable, rows):
            seed = row_seed(self._run_seed, row["id"])
            if has_task(row) and not self._filter_enabled:
                row["kept"] = True  # no filter: every parsed task is used, its consistency stays unjudged
            task = None
            if has_task(row) and row["kept"]:
                task = SynthesizedTask(question=row["question"], precise=row["precise"], informative=row["informative"])
            row["messages"], row["kind"] = conversation(row["caption"], task, seed)
            row.update(seed=seed, created_at=created_at)
