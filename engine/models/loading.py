"""Load processors and models through transformers' Auto classes: one path for hub ids, local checkpoints, models on
object storage (staged to node-local disk first) and the tiny test models alike; and read from a checkpoint the chat
format its prompts must have.

Remote code stays off unless the caller asks for it. An image-text model whose processor does not load as a processor
is an error here: when the processor class named in processor_config.json is unknown to transformers (a custom class
not registered before loading, or one that needs remote code), AutoProcessor silently returns just the tokenizer, and
that would surface much later as images ignored or a confusing failure inside the collator.

torch and transformers are imported where a model or processor is loaded, not with this module: every Ray worker of a
stream imports it through the stage's steps (it cost each 6 s of a core on 2 cores), and most of them, the driver
included, never load a model.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engine.config import ConfigError, EngineConfig, is_local_path, is_url
from engine.models.families import ModelFamily, for_checkpoint, get_family
from engine.models.staging import stage_model

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

logger = logging.getLogger(__name__)
# The variable huggingface_hub reads its token from: gated models (Llama 3) need one with access granted.
HUB_TOKEN_ENV = "HF_TOKEN"

ModelKind = Literal["image-text-to-text", "causal-lm"]
DType = Literal["auto", "float32", "bfloat16", "float16"]

# transformers' Auto class of each kind of model.
_MODEL_CLASSES = {"image-text-to-text": "AutoModelForImageTextToText", "causal-lm": "AutoModelForCausalLM"}
# torch's dtypes by name; "auto" keeps the dtype recorded in the checkpoint's config.
_DTYPES = ("auto", "float32", "bfloat16", "float16")


class ProcessorLoadError(ValueError):
    """An image-text model's processor came back as a bare tokenizer."""


class ModelAccessError(RuntimeError):
    """A hub model this environment may not download: gated or private, and no token (or one without access)."""


def check_hub_access(repo_id: str) -> None:
    """Fail early, naming the model and the token variable, when the hub refuses `repo_id` (a gated model without a
    token otherwise fails deep inside vLLM or transformers with a bare HTTP 401). An unreachable hub is left to the
    loader, which may still find the model in its local cache."""
    from huggingface_hub import auth_check, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return
    token = "is not set" if not os.environ.get(HUB_TOKEN_ENV) else "holds a token without access to it"
    try:
        auth_check(repo_id)
    except GatedRepoError:
        raise ModelAccessError(
            f"{repo_id} is gated on the Hugging Face hub and {HUB_TOKEN_ENV} {token}: accept the model's licence on its "
            f"hub page, set {HUB_TOKEN_ENV} in the submitting environment and list it in cluster.forward_env (or "
            "give it to every node, see cluster/README.md)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelAccessError(
            f"{repo_id} was not found on the Hugging Face hub (or it is private and {HUB_TOKEN_ENV} {token}); check "
            "the model id"
        ) from None
    except Exception as err:  # noqa: BLE001 - no network, a hub outage: the loader's own error says it better
        logger.warning("could not check access to %s on the hub (%s); loading it anyway", repo_id, err)


def check_hub_models(models: dict[str, str]) -> None:
    """Check, on a stage's driver before any actor starts, that the hub can serve each model it is about to load
    (field -> reference); a refusal is a ConfigError naming the field."""
    for field, ref in models.items():
        if not is_url(ref) and not is_local_path(ref) and not Path(ref).exists():
            try:
                check_hub_access(ref)
            except ModelAccessError as err:
                raise ConfigError(f"{field}: {err}") from None


def resolve_model(ref: str | os.PathLike[str]) -> str:
    """Where a model loads from: an object-store URL is staged to node-local disk (engine.models.staging); a hub id is
    checked for access first; a local path is used as it is."""
    ref = str(ref)
    if is_url(ref):
        return stage_model(ref)
    if not is_local_path(ref) and not Path(ref).exists():
        check_hub_access(ref)
    return ref


def load_processor(
    name_or_path: str | os.PathLike[str], trust_remote_code: bool = False, **processor_kwargs: Any
) -> ProcessorMixin | PreTrainedTokenizerBase:
    """The model's processor (image-text models) or tokenizer (text models). `processor_kwargs` override the saved
    processor settings (e.g. Qwen2-VL's min_pixels / max_pixels)."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer, PreTrainedTokenizerBase

    name_or_path = resolve_model(name_or_path)
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if not is_image_text_config(config):
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **processor_kwargs)
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
    import torch
    import transformers

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = getattr(transformers, _MODEL_CLASSES[kind]).from_pretrained(
        resolve_model(name_or_path), dtype=torch_dtype, trust_remote_code=trust_remote_code
    )
    return model.eval()


def is_image_text_config(config: PretrainedConfig) -> bool:
    """Whether AutoModelForImageTextToText builds this model, natively or through the checkpoint's own code."""
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    auto_map = getattr(config, "auto_map", None) or {}
    return type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING or "AutoModelForImageTextToText" in auto_map


# Special tokens as Llama-3 and Qwen spell them; a family's format is only right for a checkpoint that has them all.
_SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")


@dataclass(frozen=True)
class ChatFormat:
    """A family's prompt format as one checkpoint needs it, and the token ids that end an answer in it (matched on
    ids: stop strings are matched on detokenized text, where skipped special tokens never appear)."""

    family: ModelFamily
    stop_token_ids: tuple[int, ...]


def tokenizer_of(processor: ProcessorMixin | PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    from transformers import PreTrainedTokenizerBase

    return processor if isinstance(processor, PreTrainedTokenizerBase) else processor.tokenizer


def tokenizer_bos(tokenizer: PreTrainedTokenizerBase) -> str:
    """The BOS the tokenizer puts in front of every text it encodes (Llama-3's <|begin_of_text|>), or "" (Qwen2 has
    none)."""
    bos = tokenizer.bos_token_id
    return tokenizer.bos_token if bos is not None and tokenizer("x").input_ids[:1] == [bos] else ""


def chat_format(family: ModelFamily | str, processor: ProcessorMixin | PreTrainedTokenizerBase,
                model: str = "the model") -> ChatFormat:
    """`family` as the checkpoint behind `processor` needs it: its processor's image token, its tokenizer's BOS
    written out (engines then add no special tokens). Raises ValueError naming the tokens when the checkpoint lacks a
    special token the format writes, which means the config names the wrong family for the model."""
    tokenizer = tokenizer_of(processor)
    family = for_checkpoint(family, image_token=getattr(processor, "image_token", None), bos=tokenizer_bos(tokenizer))
    vocabulary = tokenizer.get_vocab()
    written = set(_SPECIAL_TOKEN.findall(family.begin + family.header("user") + family.turn_end + family.end_of_text
                                         + family.image_token))
    if not _SPECIAL_TOKEN.search(family.image_token):  # llava-hf's plain "<image>"
        written.add(family.image_token)
    missing = sorted(written - set(vocabulary))
    if missing:
        raise ValueError(f"{model}: its tokenizer has no {', '.join(missing)}, which the {family.name!r} format "
                         "writes; is `family` right for this model?")
    stops = tuple(vocabulary[token] for token in family.stop if token in vocabulary)
    return ChatFormat(family, stops)


def engine_chat_format(engine: EngineConfig, family: ModelFamily | str | None = None) -> ChatFormat:
    """The format prompts for `engine` are rendered in (its family, or `family`), read from its checkpoint; behind an
    HTTP server the model's files are not here and the server renders with its own template, so the family is used
    as written."""
    family = get_family(family or engine.family)
    if engine.backend == "openai":
        return ChatFormat(family, ())
    return chat_format(family, load_processor(engine.model, engine.trust_remote_code, **engine.processor_kwargs()),
                       engine.model)


def raw_prompt_begin(engine: EngineConfig) -> str:
    """What a raw prompt (no chat format: the judge's) starts with for `engine`: its tokenizer's BOS, written out
    because engines add no special tokens; behind an HTTP server, the server adds it."""
    if engine.backend == "openai":
        return ""
    return tokenizer_bos(tokenizer_of(load_processor(engine.model, engine.trust_remote_code)))
