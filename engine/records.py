"""The data contracts between stages (DESIGN.md section 3), as pyarrow schemas.

Every stage boundary is a Parquet file set with one of these schemas; scripts and users rely on the column names, so
change them only together with DESIGN.md. This module imports nothing of `engine`.
"""

from __future__ import annotations

import json

import pyarrow as pa

# Input: one image-caption pair. `image` holds the encoded bytes, or is null when `image_path` (relative to the data
# set's root) names the file instead. `instruction` (optional) is the record's own request for the caption (e.g.
# "Generate a recipe for this food."), the caption task's user turn; null means "Describe the image.". `meta` is
# free-form JSON text carried through to the outputs.
CAPTION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("image_path", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("instruction", pa.string()),
        pa.field("meta", pa.string()),
    ]
)

# Columns that say where a row came from and what made it; shared by the task and training-example rows.
LINEAGE_FIELDS = [
    pa.field("synthesizer", pa.string()),
    pa.field("filter", pa.string()),
    pa.field("prompt_version", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("shard", pa.string()),
    pa.field("created_at", pa.timestamp("us", tz="UTC")),
]

# What compose made of a kept task (engine.synthesis.compose; null for a task that was not kept): `compose_rule`
# (cot_template | informative_only | informative_then_precise) and `task_kind` (forward, question_from_answer, ...: who
# gives what to whom in the training exchange).
COMPOSE_FIELDS = [
    pa.field("compose_rule", pa.string()),
    pa.field("task_kind", pa.string()),
]

# One synthesized task, kept or not; `reason` says why a task was dropped.
TASK_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("question", pa.string()),
        pa.field("precise", pa.string()),
        pa.field("informative", pa.string()),
        pa.field("consistency", pa.string()),  # yes | no | open | null (not judged)
        pa.field("kept", pa.bool_()),
        pa.field("reason", pa.string()),
        *COMPOSE_FIELDS,
        *LINEAGE_FIELDS,
    ]
)

MESSAGE_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])

# An image as Hugging Face datasets stores its `Image` feature: the encoded bytes (and a path, null here). With the
# schema metadata below, `datasets.load_dataset("parquet")` decodes the column to PIL images by itself.
HF_IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
# datasets reads a Parquet schema's `huggingface` metadata for the features of the columns whose Arrow type matches
# them (datasets.Features.from_arrow_schema); `List` is the datasets >= 4 name of a list feature.
HF_IMAGES_METADATA = {b"huggingface": json.dumps(
    {"info": {"features": {"images": {"_type": "List", "feature": {"_type": "Image"}}}}}).encode()}


def image_bytes(image: bytes | dict | None) -> bytes | None:
    """The encoded bytes of one element of an `images` column: stored as HF_IMAGE_TYPE in the published sets, plain
    bytes where the images come from elsewhere (a LLaMA-Factory JSON's files, tests)."""
    return image["bytes"] if isinstance(image, dict) else image


# One training conversation (ShareGPT / LLaMA-Factory style, `<image>` placeholders in the message text).
EXAMPLE_KINDS = ("caption", "synthetic", "caption+synthetic")
EXAMPLE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("images", pa.list_(HF_IMAGE_TYPE)),
        pa.field("messages", pa.list_(MESSAGE_TYPE)),
        pa.field("kind", pa.string()),
        *COMPOSE_FIELDS,
        *LINEAGE_FIELDS,
    ],
    metadata=HF_IMAGES_METADATA,
)

# A row that could not be used, with the stage that refused it and why. The original row's columns follow these.
QUARANTINE_FIELDS = [
    pa.field("id", pa.string()),
    pa.field("stage", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("detail", pa.string()),
]

# One benchmark example (evaluation input). Optional columns by task: `answer_type` (OPEN/CLOSED), options `A`..`D`,
# or a list label serialized as JSON text in `label`.
BENCHMARK_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("input", pa.string()),
        pa.field("label", pa.string()),
        pa.field("answer_type", pa.string()),
    ]
)

# One model answer on one benchmark example, with its per-example scores as JSON text. `example_index` (the row's
# position in the benchmark) seeds the multiple-choice fallback; `options` (JSON text) lets multiple-choice answers be
# rescored without the benchmark; `error` says why a row has no prediction (it then scores as wrong).
PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("task", pa.string()),
        pa.field("row_id", pa.string()),  # task:example_id, the id the prediction job checkpoints by
        pa.field("example_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("prediction", pa.string()),
        pa.field("label", pa.string()),
        pa.field("answer_type", pa.string()),
        pa.field("scores", pa.string()),
        pa.field("example_index", pa.int64()),
        pa.field("options", pa.string()),
        pa.field("error", pa.string()),
    ]
)

# Seed data for synthesizer tuning (DESIGN.md section 4): an image, its caption and question/answer pairs, each with a
# precise and an informative answer. `task_name` (optional) names the seed task the row belongs to: the dev split is
# cut per task, as the release cuts it per VFLAN task; rows without one form a single task.
SEED_TASK_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("caption", pa.string()),
        pa.field(
            "tasks",
            pa.list_(
                pa.struct(
                    [
                        pa.field("question", pa.string()),
                        pa.field("precise", pa.string()),
                        pa.field("informative", pa.string()),
                    ]
                )
            ),
        ),
        pa.field("task_name", pa.string()),
    ]
)
