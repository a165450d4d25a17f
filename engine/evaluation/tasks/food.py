"""Food: Recipe1M (recipe generation, ROUGE-L), Food101 (101-way classification as multiple choice), FoodSeg103 and
Nutrition5K (ingredient lists, per-image F1 and recall).

Hub data: `AdaptLLM/food-VQA-benchmark`, subsets `Recipe1M`, `Food101`, `FoodSeg103`, `Nutrition5K`, split `test`;
records hold `image`, `input` and `label`. Food101's label is the class NAME (underscores read as spaces), which
becomes its option number here, since option `i` is class `i`; FoodSeg103 and Nutrition5K labels are lists of class
names. Answers get 256 new tokens on the three classification-like tasks (the paper's cut against repetitive output).
Source: the data set's viewer on the Hugging Face hub and the paper's released evaluation code (github.com/bigai-ai/
QA-Synthesizer, vllm_inference/utils/task.py).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from engine.evaluation import vocabularies
from engine.evaluation.tasks import RecordError, TaskSpec, list_label, text_label

HUB_ID = "AdaptLLM/food-VQA-benchmark"
SHORT_ANSWER_TOKENS = 256


@cache
def _food101_option_by_name() -> dict[str, str]:
    return {name.lower(): str(class_id) for class_id, name in enumerate(vocabularies.food101_classes())}


def food101_label(value: Any) -> str:
    """A Food101 label (class name, or an option number already) as its option number '0'..'100'.

    A label that names no class (the empty label included) is refused: the official code stops with a KeyError there.
    """
    text = text_label(value).strip()
    if text.isdigit() and int(text) < len(vocabularies.food101_classes()):
        return text
    option = _food101_option_by_name().get(text.replace("_", " ").lower())
    if option is None:
        raise RecordError("unknown_label", f"{text!r} is not a Food-101 class")
    return option


TASKS = (
    TaskSpec(name="recipe1m", title="Recipe1M", domain="food", scorer="recipe1m", metrics=("rouge_l",),
             hub_id=HUB_ID, hub_config="Recipe1M"),
    TaskSpec(name="nutrition5k", title="Nutrition5K", domain="food", scorer="nutrition5k", metrics=("recall",),
             hub_id=HUB_ID, hub_config="Nutrition5K", max_tokens=SHORT_ANSWER_TOKENS, label=list_label,
             list_label=True),
    TaskSpec(name="food101", title="Food101", domain="food", scorer="food101", metrics=("accuracy",),
             hub_id=HUB_ID, hub_config="Food101", max_tokens=SHORT_ANSWER_TOKENS, label=food101_label),
    TaskSpec(name="foodseg103", title="FoodSeg103", domain="food", scorer="foodseg103", metrics=("f1",),
             hub_id=HUB_ID, hub_config="FoodSeg103", max_tokens=SHORT_ANSWER_TOKENS, label=list_label,
             list_label=True),
)
