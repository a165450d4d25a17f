"""Small data sets built in a test's tmp dir: valid pairs and every kind of broken input the engine must survive."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(color: tuple[int, int, int] = (30, 30, 200), size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="JPEG")
    return buffer.getvalue()


# reason each broken record of write_corrupt_jsonl_dataset must be quarantined with, by id (None: the record is fine)
CORRUPT_EXPECTATIONS = {
    "good-1": None,
    "good-2": None,
    "truncated-jpeg": "corrupt_image",
    "zero-bytes": "empty_image",
    "text-as-jpg": "not_an_image",
    "missing-file": "missing_image",
    "path-escape": "path_escape",
    "empty-caption": "empty_caption",
    "no-caption": "missing_field",
    "good-1-again": None,
}


def write_corrupt_jsonl_dataset(root: Path) -> Path:
    """A JSONL + image folder data set mixing good records with each broken kind; returns the JSONL path.

    Besides the records named in CORRUPT_EXPECTATIONS it holds one line that is not JSON (line 10) and one line that is
    a JSON list, not an object (line 11); the last good record repeats id "good-1" (a duplicate)."""
    images = root / "images"
    images.mkdir(parents=True)
    (images / "good1.png").write_bytes(png_bytes())
    (images / "good2.jpg").write_bytes(jpeg_bytes())
    (images / "truncated.jpg").write_bytes(jpeg_bytes(size=256)[:300])
    (images / "zero.png").write_bytes(b"")
    (images / "text.jpg").write_text("this is not an image\n")
    (root.parent / "outside.png").write_bytes(png_bytes())
    records = [
        {"id": "good-1", "image_path": "images/good1.png", "caption": "A red square."},
        {"id": "good-2", "image_path": "images/good2.jpg", "caption": "A blue square."},
        {"id": "truncated-jpeg", "image_path": "images/truncated.jpg", "caption": "Cut short."},
        {"id": "zero-bytes", "image_path": "images/zero.png", "caption": "Nothing here."},
        {"id": "text-as-jpg", "image_path": "images/text.jpg", "caption": "Text in disguise."},
        {"id": "missing-file", "image_path": "images/absent.png", "caption": "Gone."},
        {"id": "path-escape", "image_path": "../outside.png", "caption": "Escaped."},
        {"id": "empty-caption", "image_path": "images/good1.png", "caption": "   "},
        {"id": "no-caption", "image_path": "images/good1.png"},
    ]
    lines = [json.dumps(record) for record in records]
    lines.append('{"id": "broken", "caption": ')  # line 10: not JSON
    lines.append('["a", "list"]')  # line 11: JSON, not an object
    lines.append(json.dumps({"id": "good-1", "image_path": "images/good2.jpg", "caption": "Same id again."}))
    path = root / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_parquet_pairs(root: Path, rows: int, shards: int) -> Path:
    """`rows` valid image-caption pairs (coloured squares, 112 px) spread over `shards` Parquet files, ids pair-00000..."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True)
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    names = list(colours)
    per_shard = -(-rows // shards)
    for shard in range(shards):
        indices = range(shard * per_shard, min(rows, (shard + 1) * per_shard))
        table = pa.table(
            {
                "id": [f"pair-{i:05d}" for i in indices],
                "image": [png_bytes(colours[names[i % 3]], size=112) for i in indices],
                "caption": [f"A {names[i % 3]} square on a plain background." for i in indices],
            }
        )
        pq.write_table(table, root / f"shard-{shard:03d}.parquet")
    return root


def write_pairs_as(data_format: str, root: Path, rows: int) -> Path:
    """The same `rows` pairs as write_parquet_pairs, stored in `data_format`; returns the data set path."""
    import tarfile

    import datasets
    import pyarrow.parquet as pq

    parquet = write_parquet_pairs(root / "parquet", rows, shards=2)
    records = pq.read_table(parquet).to_pylist()
    if data_format == "parquet":
        return parquet
    target = root / data_format
    target.mkdir()
    if data_format == "jsonl":
        (target / "images").mkdir()
        lines = []
        for record in records:
            (target / "images" / f"{record['id']}.png").write_bytes(record["image"])
            lines.append(json.dumps({"id": record["id"], "image_path": f"images/{record['id']}.png",
                                     "caption": record["caption"]}))
        (target / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    elif data_format == "webdataset":
        with tarfile.open(target / "shard-000.tar", "w") as tar:
            for record in records:
                for ext, data in (("png", record["image"]), ("txt", record["caption"].encode())):
                    info = tarfile.TarInfo(f"{record['id']}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    elif data_format == "hf_disk":
        datasets.Dataset.from_list(records).save_to_disk(str(target))
    return target


def task_benchmark_records(task: str, rows: int) -> list[dict]:
    """`rows` records of one benchmark task in the shape its hub copy has (image, input, label, and answer_type or
    option columns where the task needs them), for tests that run a recipe's evaluation without the hub."""
    from engine.evaluation import vocabularies
    from engine.evaluation.tasks import get_task

    spec = get_task(task)
    colours = ((220, 30, 30), (30, 200, 30), (30, 30, 220))
    records = []
    for index in range(rows):
        record = {"id": f"{task}-{index}", "image": png_bytes(colours[index % 3], size=112),
                  "input": f"Question {index} about this image?"}
        if spec.answer_type:
            closed = index % 2 == 0
            record.update(answer_type="CLOSED" if closed else "OPEN", label="yes" if closed else "left lung")
        elif spec.options:
            record.update(A="first", B="second", C="third", D="fourth", label="B")
        elif task == "food101":
            record["label"] = vocabularies.food101_classes()[index % 101]
        elif spec.list_label:
            names = (vocabularies.foodseg103_classes() if task == "foodseg103"
                     else vocabularies.nutrition5k_ingredients())
            record["label"] = list(names[index % 5: index % 5 + 2])
        else:
            record["label"] = "A plate of food on a table, seen from above."
        records.append(record)
    return records


def write_task_benchmark(task: str, folder: Path, rows: int) -> Path:
    """task_benchmark_records as a Parquet file; returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task}.parquet"
    pq.write_table(pa.Table.from_pylist(task_benchmark_records(task, rows)), path)
    return path


def training_config(**fields):
    """A valid CPU training section (2 workers, ZeRO-2) with `fields` changed."""
    from engine.config import TrainingConfig

    from tests.conftest import REPO_ROOT

    base = {"model": "org/model", "family": "qwen2-vl", "use_gpu": False, "precision": "fp32", "num_workers": 2,
            "micro_batch_size": 2, "global_batch_size": 8,
            "deepspeed_config": str(REPO_ROOT / "configs" / "deepspeed" / "zero2.json")}
    return TrainingConfig.model_validate(base | fields)
