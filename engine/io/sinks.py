"""Exports of a published instruction set to the formats other trainers read.

- LLaMA-Factory: a ShareGPT-style JSON list ({"messages": [...], "images": [paths]}) with the images as files beside
  it, and the dataset_info.json entry that registers it (formatting "sharegpt", OpenAI-style role/content tags).
- Hugging Face datasets: `save_to_disk` of the Parquet set.
Both stream the Parquet set batch by batch; neither holds the whole set in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pyarrow.dataset as pads

IMAGE_SIGNATURES = {b"\x89PNG": "png", b"\xff\xd8\xff": "jpg", b"GIF8": "gif", b"RIFF": "webp", b"BM": "bmp"}


def image_extension(data: bytes) -> str:
    return next((ext for magic, ext in IMAGE_SIGNATURES.items() if data.startswith(magic)), "bin")


def llama_factory_dataset_info(name: str, file_name: str) -> dict:
    return {
        name: {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    }


def export_llama_factory(instructions: str | Path, out_dir: str | Path, name: str = "adapt_instructions") -> int:
    """Write `{out_dir}/{name}.json`, `{out_dir}/images/` and `{out_dir}/dataset_info.json`; return the example count."""
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(out_dir / f"{name}.json", "w", encoding="utf-8") as file:
        file.write("[")
        fs, path = fsspec.core.url_to_fs(str(instructions))  # a run directory may be on object storage
        for batch in pads.dataset(path, filesystem=fs, format="parquet").to_batches(
                columns=["id", "images", "messages"]):
            for example in batch.to_pylist():
                paths = []
                for index, data in enumerate(example["images"]):
                    # ids can hold any character; the file name uses the example's position instead
                    path = images_dir / f"{count:09d}_{index}.{image_extension(data)}"
                    path.write_bytes(data)
                    paths.append(str(path.relative_to(out_dir)))
                record = {"id": example["id"], "messages": example["messages"], "images": paths}
                file.write(("\n" if count == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
                count += 1
        file.write("\n]\n")
    (out_dir / "dataset_info.json").write_text(json.dumps(llama_factory_dataset_info(name, f"{name}.json"), indent=2))
    return count


def export_hf_disk(instructions: str | Path, out_dir: str | Path) -> int:
    """`datasets.Dataset.save_to_disk` of the instruction set; return the example count."""
    import datasets

    dataset = datasets.load_dataset("parquet", data_files=f"{instructions}/*.parquet", split="train")
    dataset.save_to_disk(str(out_dir))
    return len(dataset)
