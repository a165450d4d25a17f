"""A synthesizer actor killed mid-batch is restarted by Ray and its batch retried: nothing is lost or doubled."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pyarrow.parquet as pq
import pytest

from engine.config import RunConfig
from engine.synthesis.pipeline import SynthesisStage
from tests.fixtures import write_parquet_pairs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROWS, SHARDS = 80, 8
WORKING_ACTOR_TITLE = "ray::MapWorker(MapBatches(ModelSynthesizer)).submit"  # Ray's process title while in a batch


def busy_synthesizer_pids() -> set[int]:
    pids = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline and cmdline[0].startswith(WORKING_ACTOR_TITLE):
            pids.add(process.info["pid"])
    return pids


def test_killed_synthesizer_actor_is_replaced(ray_cluster, tiny_model_dir, tmp_path):
    data = write_parquet_pairs(tmp_path / "pairs", ROWS, SHARDS)
    config = RunConfig.model_validate(
        {
            "output_dir": str(tmp_path / "run"),
            "data": {"path": str(data), "format": "parquet"},
            "synthesis": {
                "synthesizer": "model",
                "prompt_format": "family",
                "engine": {"model": str(tiny_model_dir / "tiny-qwen2-vl"), "family": "qwen2-vl",
                           "backend": "transformers", "device": "cpu", "num_cpus": 0.5, "batch_size": 4,
                           "max_tokens": 24},
                # The random-weight model writes no task; every pair must still be published for the count below.
                "keep_pairs_without_task": True,
            },
            "filter": {"judge": "lexical"},
        }
    )
    result = {}
    runner = threading.Thread(target=lambda: result.update(manifest=SynthesisStage(config).run()))
    runner.start()
    victims: set[int] = set()
    deadline = time.monotonic() + 300
    while not victims and runner.is_alive() and time.monotonic() < deadline:
        victims = busy_synthesizer_pids()
        time.sleep(0.1)
    assert victims, "the synthesizer actor was never seen working"
    for pid in victims:  # a process of the Ray this test session started
        os.kill(pid, signal.SIGKILL)
    replacements: set[int] = set()
    while runner.is_alive():
        replacements |= busy_synthesizer_pids() - victims
        time.sleep(0.1)
    runner.join()

    assert replacements, "no new synthesizer actor took over"
    manifest = result["manifest"]
    assert manifest["rows_in"] == manifest["rows_out"] == ROWS
    ids = pq.read_table(tmp_path / "run" / "synthesis" / "instructions").column("id").to_pylist()
    assert sorted(ids) == [f"pair-{i:05d}" for i in range(ROWS)]
