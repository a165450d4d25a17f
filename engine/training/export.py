"""Export of the trained model as a Hugging Face model folder that transformers, vLLM and `adapt evaluate` load as is:
weights (safetensors) + config + generation config, and the processor (tokenizer, image processor, chat template).

Under ZeRO-3 each worker holds a slice of every weight, so the full weights are gathered first; every worker must take
part in that, and only rank 0 writes. The folder is written locally and then copied to the run's storage (a local path
or an fsspec URL), so a remote run directory works the same way.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import fsspec
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin


def gather_weights(engine, rank: int) -> dict[str, torch.Tensor] | None:
    """The model's full state dict on rank 0, None on the other ranks. Call it on every rank."""
    if engine.zero_optimization_partition_weights():
        # DeepSpeed's consolidation (as accelerate and the HF Trainer use it): gathers the partitions layer by layer
        # instead of the whole model at once, and returns the result on rank 0 only.
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict() if rank == 0 else None


def upload_folder(local: str | os.PathLike[str], target: str) -> None:
    """Copy a local folder's files to `target` (path or fsspec URL), replacing what was there."""
    fs, path = fsspec.core.url_to_fs(target)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.makedirs(path, exist_ok=True)
    for file in sorted(Path(local).rglob("*")):
        if file.is_file():
            destination = f"{path}/{file.relative_to(local).as_posix()}"
            fs.makedirs(destination.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(file), destination)


def save_model_folder(model: PreTrainedModel, state_dict: dict[str, torch.Tensor],
                      processor: ProcessorMixin | PreTrainedTokenizerBase, target: str) -> None:
    """Write the HF model folder to `target` (rank 0 only)."""
    # Training switched the KV cache off; generation needs it back on in the saved config.
    model.config.use_cache = True
    if hasattr(model.config, "text_config"):
        model.config.text_config.use_cache = True
    with tempfile.TemporaryDirectory(prefix="adapt-export-") as local:
        model.save_pretrained(local, state_dict=state_dict)
        processor.save_pretrained(local)
        upload_folder(local, target)
