"""Remote sensing: CLRS, UC Merced and FloodNet (scene/condition classification as multiple choice, accuracy) and
NWPU-Captions (captioning, ROUGE-L).

Hub data: `AdaptLLM/remote-sensing-VQA-benchmark` (published on the hub with a viewer; about 24.8k rows), split `test`,
records with `image`, `input` and `label`. Its subset names and option columns were not in any source available when
this module was written (the paper's released evaluation code covers biomedicine and food only), so the names below
follow the task names and are UNVERIFIED: check them against the data set's viewer before a cluster run, or point the
benchmark's `path` at a local copy. Classification records must carry their options, as letter columns (`A`, `B`, ...)
or an `options` mapping, and the label is the correct option's key.
"""

from __future__ import annotations

from engine.evaluation.tasks import TaskSpec

HUB_ID = "AdaptLLM/remote-sensing-VQA-benchmark"


def _classification(name: str, title: str, hub_config: str) -> TaskSpec:
    return TaskSpec(name=name, title=title, domain="remote_sensing", scorer=name, metrics=("accuracy",),
                    hub_id=HUB_ID, hub_config=hub_config, options=True)


TASKS = (
    _classification("clrs", "CLRS", "CLRS"),
    _classification("ucmerced", "UC Merced", "UCMerced"),
    _classification("floodnet", "FloodNet", "FloodNet"),
    TaskSpec(name="nwpu_captions", title="NWPU-Captions", domain="remote_sensing", scorer="nwpu_captions",
             metrics=("rouge_l",), hub_id=HUB_ID, hub_config="NWPU-Captions"),
)
