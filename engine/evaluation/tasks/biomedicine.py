"""Biomedicine: VQA-RAD, SLAKE, PathVQA (open and closed questions) and PMC-VQA (four-way multiple choice).

Hub data: `AdaptLLM/biomed-VQA-benchmark`, one subset per task (`VQA_RAD`, `SLAKE`, `PathVQA`, `PMC-VQA`), split
`test`; records hold `image`, `input` (the question as the model sees it) and `label`, plus `answer_type`
(OPEN/CLOSED) for the three VQA sets and option columns `A`..`D` for PMC-VQA (the label is the letter). Source: the
data set's viewer on the Hugging Face hub and the paper's released evaluation code (github.com/bigai-ai/
QA-Synthesizer, vllm_inference/utils/task.py).
"""

from __future__ import annotations

from engine.evaluation.tasks import TaskSpec

HUB_ID = "AdaptLLM/biomed-VQA-benchmark"
_OPEN_CLOSED = ("open_recall", "closed_accuracy")


def _medical_vqa(name: str, title: str, hub_config: str) -> TaskSpec:
    return TaskSpec(name=name, title=title, domain="biomedicine", scorer=name, metrics=_OPEN_CLOSED, hub_id=HUB_ID,
                    hub_config=hub_config, answer_type=True)


TASKS = (
    _medical_vqa("vqa_rad", "VQA-RAD", "VQA_RAD"),
    _medical_vqa("slake", "SLAKE", "SLAKE"),
    _medical_vqa("pathvqa", "PathVQA", "PathVQA"),
    TaskSpec(name="pmc_vqa", title="PMC-VQA", domain="biomedicine", scorer="pmc_vqa", metrics=("accuracy",),
             hub_id=HUB_ID, hub_config="PMC-VQA", options=True),
)
