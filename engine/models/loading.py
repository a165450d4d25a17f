"""Load processors and models through transformers' Auto classes: one path for hub ids, local checkpoints and the
tiny test models alike.

Remote code stays off unless the caller asks for it. An image-text model whose processor does not load as a processor
is an error here: when the processor class named in processor_config.json is unknown to transformers (a custom class
not registered before loading, or one that needs remote code), AutoProcessor silently returns just the tokenizer, and
that would surface much later as images ignored or a confusing failure inside the collator.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from transformers import (
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

ModelKind = Literal["image-text-to-text", "causal-lm"]
DType = Literal["auto", "float32", "bfloat16", "float16"]

_MODEL_CLASSES = {"image-text-to-text": AutoModelForImageTextToText, "causal-lm": AutoModelForCausalLM}
# "auto" keeps the dtype recorded in the checkpoint's config.
_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ProcessorLoadError(ValueError):
    """An image-text model's processor came back as a bare tokenizer."""


def load_processor(
    name_or_path: str | os.PathLike[str], trust_remote_code: bool = False
) -> ProcessorMixin | PreTrainedTokenizerBase:
    """The model's processor (image-text models) or tokenizer (text models)."""
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if not is_image_text_config(config):
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if isinstance(processor, PreTrainedTokenizerBase):
        raise ProcessorLoadError(
            f"{name_or_path} is an image-text model ({config.model_type}) but AutoProcessor returned only its "
            f"tokenizer ({type(processor).__name__}), so it could not process images. The processor class named in "
            "its processor_config.json is probably unknown to transformers: register a custom class with "
            "AutoProcessor.register before loading, or pass trust_remote_code=True if the checkpoint ships its code."
        )
    return processor


def load_model(
    name_or_path: str | os.PathLike[str],
    kind: ModelKind,
    dtype: DType = "auto",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """The model in eval mode, built by the Auto class for `kind`, with weights in `dtype`."""
    if kind not in _MODEL_CLASSES:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(_MODEL_CLASSES)}")
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    model = _MODEL_CLASSES[kind].from_pretrained(
        name_or_path, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    return model.eval()


def is_image_text_config(config: PretrainedConfig) -> bool:
    """Whether AutoModelForImageTextToText builds this model, natively or through the checkpoint's own code."""
    auto_map = getattr(config, "auto_map", None) or {}
    return type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING or "AutoModelForImageTextToText" in auto_map
