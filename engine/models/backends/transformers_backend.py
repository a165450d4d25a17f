"""Hugging Face transformers ``generate``: the reference implementation, for CPU tests, debugging and models vLLM lacks.

The model and processor load through ``engine.models.loading``, the same path training uses, onto one device (``cpu``
or ``cuda``; sharding a model over GPUs is vLLM's job). A batch is padded on the left so every row continues from its
own last token; requests with different decoding settings run as separate ``generate`` calls. Outputs follow vLLM's
conventions so the two backends are interchangeable: the end-of-sequence token counts as an output token but is not in
the text, and a stop string ends the text without being part of it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from engine.config import EngineConfig
from engine.models.backends.base import (
    Backend,
    GenerationRequest,
    GenerationResult,
    run_isolating_failures,
    with_output_length,
)
from engine.models.loading import load_model, load_processor


class TransformersBackend(Backend):
    def __init__(self, config: EngineConfig):
        self._model_id = config.model
        self._device = torch.device(config.device)
        self._output_length = config.output_length
        self._processor = load_processor(config.model, trust_remote_code=config.trust_remote_code,
                                         **config.processor_kwargs())
        takes_images = not isinstance(self._processor, PreTrainedTokenizerBase)
        self._tokenizer = self._processor.tokenizer if takes_images else self._processor
        self._takes_images = takes_images
        kind = "image-text-to-text" if takes_images else "causal-lm"
        model = load_model(config.model, kind, dtype=config.dtype, trust_remote_code=config.trust_remote_code)
        self._model = model.to(self._device)
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token is None:
            # Llama-3 tokenizers have no pad token; padding is masked out, so any id will do.
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._pad_id = self._tokenizer.pad_token_id
        self._eos_ids = _eos_ids(self._model, self._tokenizer)

    @property
    def model_id(self) -> str:
        return self._model_id

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        requests = [with_output_length(request, self._output_length) for request in requests]
        return run_isolating_failures(requests, self._generate_batch)

    def close(self) -> None:
        self._model = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    def _generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            key = (request.max_tokens, request.min_tokens, request.temperature, tuple(request.stop or ()),
                   tuple(request.stop_token_ids), request.stop_at_eos)
            groups[key].append(index)
        results: list[GenerationResult | None] = [None] * len(requests)
        for indices in groups.values():
            group = [requests[index] for index in indices]
            for index, result in zip(indices, self._generate_group(group), strict=True):
                results[index] = result
        return results

    def _generate_group(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        inputs = self._encode(requests).to(self._device)
        with torch.inference_mode():
            output = self._model.generate(**inputs, **self._generation_kwargs(requests[0]))
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return [
            self._result(tokens, request, prompt_length)
            for tokens, request, prompt_length in zip(new_tokens, requests, prompt_lengths, strict=True)
        ]

    def _encode(self, requests: Sequence[GenerationRequest]):
        # Prompts carry every special token they need, the BOS included (engine.models.loading.chat_format).
        texts = [request.prompt for request in requests]
        if not any(request.images for request in requests):
            return self._processor(text=texts, padding=True, add_special_tokens=False, return_tensors="pt")
        if not self._takes_images:
            raise ValueError(f"{self._model_id} is a text-only model; it cannot take images")
        # One image list per prompt: the form every processor accepts (mllama requires it).
        images = [list(request.images) for request in requests]
        return self._processor(text=texts, images=images, padding=True, add_special_tokens=False,
                               return_tensors="pt")

    def _generation_kwargs(self, request: GenerationRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": request.max_tokens, "pad_token_id": self._pad_id}
        if request.min_tokens:
            kwargs["min_new_tokens"] = request.min_tokens  # suppresses the end-of-sequence tokens until then
        if request.temperature > 0:
            # Plain temperature sampling, as vLLM does with these parameters, whatever the checkpoint's defaults say.
            kwargs.update(do_sample=True, temperature=request.temperature, top_k=0, top_p=1.0)
        else:
            kwargs["do_sample"] = False
        if request.stop:
            kwargs.update(stop_strings=list(request.stop), tokenizer=self._tokenizer)
        if not request.stop_at_eos or request.stop_token_ids:
            kwargs["eos_token_id"] = sorted(self._request_eos_ids(request)) or None
        return kwargs

    def _request_eos_ids(self, request: GenerationRequest) -> set[int]:
        """The tokens that end this request: its stop token ids, and the checkpoint's end-of-sequence tokens or, with
        ``stop_at_eos`` False, the stop strings that are single tokens (``generate`` stops on the others by itself)."""
        if request.stop_at_eos:
            return self._eos_ids | set(request.stop_token_ids)
        vocabulary = self._tokenizer.get_vocab()
        return {vocabulary[stop] for stop in request.stop or () if stop in vocabulary} | set(request.stop_token_ids)

    def _result(self, tokens: list[int], request: GenerationRequest, prompt_length: int) -> GenerationResult:
        produced, output_tokens = self._produced_tokens(tokens, request)
        text = self._tokenizer.decode(produced, skip_special_tokens=not request.keep_special_tokens)
        return GenerationResult(
            text=_cut_at_stop(text, request.stop), prompt_tokens=prompt_length, output_tokens=output_tokens
        )

    def _produced_tokens(self, tokens: list[int], request: GenerationRequest) -> tuple[list[int], int]:
        """The row's tokens that belong in the text, and how many tokens the model generated for it.

        A row ends at its first end-of-sequence token (generated and counted, not shown) or, when a stop string ended
        it, where the padding begins that ``generate`` appends while the rest of the batch runs on.
        """
        eos_ids = self._request_eos_ids(request)
        for position, token in enumerate(tokens):
            if token == self._pad_id and _contains_stop(tokens[:position], request, self._tokenizer):
                return tokens[:position], position
            if token in eos_ids:
                return tokens[:position], position + 1
        return tokens, len(tokens)


def _contains_stop(tokens: list[int], request: GenerationRequest, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether a stop string ended these tokens: then a pad token after them is padding, even where the checkpoint's
    pad token is also an end-of-sequence token (Qwen2's <|endoftext|>)."""
    if not request.stop:
        return False
    raw_text = tokenizer.decode(tokens, skip_special_tokens=False)
    return any(stop in raw_text for stop in request.stop)


def _eos_ids(model, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    configured = model.generation_config.eos_token_id
    if configured is None:
        configured = tokenizer.eos_token_id
    return set(configured) if isinstance(configured, list) else {configured}


def _cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """The text before the earliest stop string."""
    positions = [text.find(string) for string in stop or ()]
    found = [position for position in positions if position >= 0]
    return text[: min(found)] if found else text
