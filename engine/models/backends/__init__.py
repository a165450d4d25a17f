"""Inference backends behind one interface: the synthesizer pool, the consistency judge and evaluation all call
``create_backend(engine_config).generate(requests)`` and never see which engine answers.

- ``vllm``: vLLM's offline engine, CUDA build on clusters, CPU build elsewhere (``vllm_backend``);
- ``transformers``: Hugging Face ``generate``, the reference path (``transformers_backend``);
- ``openai``: an OpenAI-compatible HTTP server such as ``vllm serve`` (``openai_backend``; what it can express is
  documented there).

Each backend module is imported only when chosen, so a machine without vLLM can still run the others.
"""

from __future__ import annotations

from engine.config import EngineConfig
from engine.models.backends.base import Backend, GenerationRequest, GenerationResult

__all__ = ["Backend", "GenerationRequest", "GenerationResult", "create_backend"]


def create_backend(config: EngineConfig) -> Backend:
    """The backend ``config.backend`` names, with the model loaded (or the server's address set) and ready."""
    if config.backend == "vllm":
        from engine.models.backends.vllm_backend import VLLMBackend

        return VLLMBackend(config)
    if config.backend == "transformers":
        from engine.models.backends.transformers_backend import TransformersBackend

        return TransformersBackend(config)
    if config.backend == "openai":
        from engine.models.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(config)
    raise ValueError(f"unknown inference backend {config.backend!r}")
