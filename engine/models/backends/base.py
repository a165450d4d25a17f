"""The one interface every inference backend speaks: a batch of requests in, one result per request out.

A request carries a prompt that is already rendered in the model family's format as the checkpoint needs it
(``engine.models.loading.chat_format``), with its image tokens where its images go and every special token written out,
the BOS included. Backends do not template anything and add no special tokens: processors disagree on the BOS (Llama-3
tokenizers prepend one, Mllama's processor a second one), so the text alone decides. Behind an HTTP server the prompt
is the family's as written and the server adds what its model needs.

A request that fails (a corrupt image, a prompt longer than the context, a server error) becomes a result with
``error`` set; ``generate`` raises only for programming errors in the caller, never because of one bad row, so an actor
pool keeps streaming.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from engine.config import OutputLength

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete.

    ``stop`` strings end the output and are not part of it (vLLM's convention); they are matched on the decoded text,
    where special tokens appear only with ``keep_special_tokens``, so an answer that must end at a special token (the
    end of a turn) says so with ``stop_token_ids``, which end it on the token itself. ``keep_special_tokens`` keeps tokens
    such as ``<|eot_id|>`` in the text, which the synthesizer needs to split the turns it writes. ``stop_at_eos``
    False lets only the stop strings end the output: a synthesizer writes several turns, and the end-of-turn tokens
    its checkpoint lists as end-of-sequence must not end them. ``min_tokens`` keeps the end-of-sequence tokens and
    stops from ending it earlier (benchmarks, see ``forced_length``); ``key`` names the request stably (its row id),
    which seeds the lengths benchmarks draw.
    """

    prompt: str
    images: Sequence[Image.Image] = field(default_factory=list)
    max_tokens: int = 512
    temperature: float = 0.0
    stop: Sequence[str] | None = None
    stop_token_ids: Sequence[int] = ()
    keep_special_tokens: bool = False
    stop_at_eos: bool = True
    min_tokens: int = 0
    key: str = ""


@dataclass(frozen=True)
class GenerationResult:
    """The completion of one request, or why there is none (``text`` is None exactly when ``error`` is set)."""

    text: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failure(cls, error: str | BaseException) -> GenerationResult:
        return cls(error=describe_error(error) if isinstance(error, BaseException) else error)


class Backend(ABC):
    """An inference engine holding one model; one actor holds one backend.

    ``generate`` is for one caller at a time. ``agenerate`` may be awaited by several batches at once (Ray Data runs
    an actor's async calls concurrently, engine.runtime): here they take turns on ``generate`` in a worker thread;
    a backend whose engine takes requests from several batches at once overrides it.
    """

    @property
    @abstractmethod
    def model_id(self) -> str:
        """The model this backend answers with, as recorded in lineage columns."""

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Complete every request, in order. A failed request is recorded in its result, never raised."""

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """``generate`` for a caller on an event loop, which keeps running meanwhile."""
        async with self._turn:
            return await asyncio.to_thread(self.generate, requests)

    @functools.cached_property
    def _turn(self) -> asyncio.Lock:
        """Lets concurrent ``agenerate`` calls into ``generate`` one at a time."""
        return asyncio.Lock()

    def close(self) -> None:
        """Release the model (memory, server connections). The backend is unusable afterwards."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def describe_error(error: BaseException) -> str:
    """A one-line reason for a result row: the exception type tells a corrupt image from a context overflow. Engines
    wrap the root cause ("Failed to apply the processor" from "image file is truncated"), so the causes follow."""
    reasons = []
    while error is not None:
        message = " ".join(str(error).split())
        reasons.append(f"{type(error).__name__}: {message}" if message else type(error).__name__)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return "; caused by ".join(reasons)


BatchRunner = Callable[[Sequence[GenerationRequest]], list[GenerationResult]]


def run_isolating_failures(requests: Sequence[GenerationRequest], run_batch: BatchRunner) -> list[GenerationResult]:
    """Run the batch in one call; if that call raises, run each half the same way, down to single requests.

    Engines process a batch as a whole, so one request they cannot take (an undecodable image, a prompt longer than the
    context) raises for all of them. Halving isolates it in about log2(batch) extra calls while the good requests stay
    batched; retrying them one at a time would run a GPU engine at batch size 1.
    """
    if not requests:
        return []
    try:
        return run_batch(requests)
    except Exception as error:  # noqa: BLE001 - any engine error is a per-request outcome here
        if len(requests) == 1:
            return [GenerationResult.failure(error)]
        logger.warning("batch of %d failed (%s); retrying it in halves", len(requests), describe_error(error))
    middle = len(requests) // 2
    return run_isolating_failures(requests[:middle], run_batch) + run_isolating_failures(requests[middle:], run_batch)


# Benchmark answer lengths (EngineConfig.output_length): (share, shortest, longest) bands, drawn by the request's key.
# The synthesizer writes a caption's worth of QA turns; benchmark answers are mostly a word or a phrase, with some
# descriptions and recipes among them.
LENGTH_BANDS: dict[str, tuple[tuple[float, int, int], ...]] = {
    "uniform_32_512": ((1.0, 32, 512),),
    "long_tail": ((0.80, 1, 16), (0.15, 17, 128), (0.05, 129, 1024)),
}


def forced_length(mode: OutputLength, key: str, budget: int) -> int | None:
    """The exact answer length a benchmark forces on a request named `key` with `budget` max tokens, or None when the
    model decides ('natural'). The same key gets the same length in every process and run, so the engine and every
    baseline of a benchmark generate the same tokens."""
    if mode == "natural":
        return None
    if mode == "max_tokens":
        return budget
    digest = hashlib.sha256(f"{mode}:{key}".encode()).digest()
    share = int.from_bytes(digest[:8], "big") / 2**64
    offset = int.from_bytes(digest[8:16], "big")
    for band_share, shortest, longest in LENGTH_BANDS[mode]:
        if share < band_share:
            break
        share -= band_share
    return min(budget, shortest + offset % (longest - shortest + 1))


def with_output_length(request: GenerationRequest, mode: OutputLength) -> GenerationRequest:
    """`request` as a benchmark runs it: forced to its drawn length (end-of-sequence tokens and stops cannot end it
    earlier), or unchanged when the model decides."""
    length = forced_length(mode, request.key, request.max_tokens)
    if length is None:
        return request
    return dataclasses.replace(request, max_tokens=length, min_tokens=length, stop=None)
