"""The demo domain's held-out benchmark (tools/make_demo_data.py): OPEN questions about one attribute of a drawn
scene and balanced yes/no CLOSED questions, scored exactly like VQA-RAD. It has no hub copy: configs point at
data/demo/benchmark/demo_vqa.parquet (or the .jsonl next to it)."""

from __future__ import annotations

from engine.evaluation.tasks import TaskSpec

TASKS = (
    TaskSpec(name="demo_vqa", title="Demo VQA", domain="demo", scorer="vqa_rad",
             metrics=("open_recall", "closed_accuracy"), answer_type=True),
)
