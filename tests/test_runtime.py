"""engine/runtime.py: engine actors keep several batches in flight, every actor of a pool gets batches, and a request
that cannot run fails alone there."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from engine.config import EngineConfig
from engine.models.backends import GenerationRequest, GenerationResult, create_backend
from engine.runtime import EngineStep, engine_actor_options, pool_cost, through_engine_pool

ROWS, BATCH, IN_FLIGHT, TOKENS = 48, 4, 4, 24
TOO_LONG = 7  # this row's prompt exceeds the engine's context


def engine_config(tiny_model_dir, backend: str) -> EngineConfig:
    return EngineConfig(model=str(tiny_model_dir / "tiny-text-llm"), family="text", backend=backend, device="cpu",
                        dtype="float32", kv_cache_gib=0.0625, max_model_len=128, enforce_eager=True, num_cpus=0.5,
                        batch_size=BATCH, max_concurrent_batches=IN_FLIGHT, output_length="max_tokens")


def counting_step() -> type[EngineStep]:
    """An EngineStep over a real engine that records, per row, how many of the actor's calls were running when its
    batch finished. Defined in a function so Ray ships the class by value to its actor."""

    class CountingStep(EngineStep):
        running = 0
        peak = 0

        def __init__(self, engine: EngineConfig):
            self._backend = create_backend(engine)

        def requests(self, rows):
            return [(row, GenerationRequest(("word " * 400) if row["id"] == TOO_LONG else f"Item {row['id']} is",
                                            max_tokens=TOKENS, key=str(row["id"]))) for row in rows]

        def record(self, row, result: GenerationResult):
            row.update(tokens=result.output_tokens, error=result.error)

        def output(self, rows):
            return pa.Table.from_pylist(rows)

        async def __call__(self, batch):
            cls = type(self)
            cls.running += 1
            cls.peak = max(cls.peak, cls.running)
            try:
                table = await super().__call__(batch)
            finally:
                cls.running -= 1
            return table.append_column("peak", pa.array([cls.peak] * table.num_rows))

    return CountingStep


def test_the_pool_sends_each_engine_actor_several_batches_except_transformers(tiny_model_dir):
    vllm = engine_config(tiny_model_dir, "vllm")
    for engine, in_flight in ((vllm, IN_FLIGHT), (engine_config(tiny_model_dir, "transformers"), 1),
                              # by default, four times vLLM's 256 running sequences, plus one batch
                              (vllm.model_copy(update={"max_concurrent_batches": None, "batch_size": 64}), 17),
                              (vllm.model_copy(update={"max_concurrent_batches": None, "batch_size": 256}), 5),
                              (vllm.model_copy(update={"max_concurrent_batches": None, "batch_size": 100}), 12)):
        pool = engine_actor_options(engine)["compute"]
        assert pool.max_concurrent_calls_per_actor == pool.max_tasks_in_flight_per_actor == in_flight


def test_the_pools_cost_their_actors_resources_for_the_whole_stream(tiny_model_dir):
    vllm = engine_config(tiny_model_dir, "vllm")
    synthesizer = vllm.model_copy(update={"device": "cuda", "concurrency": 2, "num_gpus": 1.0, "num_cpus": 4.0})
    judge = vllm.model_copy(update={"device": "cuda", "concurrency": 1, "num_gpus": 0.5, "num_cpus": 2.0})
    cost = pool_cost({"synthesis": synthesizer, "filter": judge}, seconds=1800, kept_tasks=500)
    # (2 x 1 + 1 x 0.5) GPUs and (2 x 4 + 1 x 2) CPUs, for half an hour
    assert (cost["accelerator_hours"], cost["cpu_core_hours"]) == (1.25, 5.0)
    assert cost["per_1k_kept_tasks"] == {"accelerator_hours": 2.5, "cpu_core_hours": 10.0}
    assert cost["pools"]["filter"] == {"actors": 1, "gpus_per_actor": 0.5, "cpus_per_actor": 2.0}
    assert pool_cost({}, seconds=10, kept_tasks=0)["per_1k_kept_tasks"] is None  # nothing kept: no rate


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_vllm_actor_runs_several_batches_at_once_and_a_bad_request_fails_alone(ray_cluster, tiny_model_dir):
    import ray

    engine = engine_config(tiny_model_dir, "vllm").model_copy(update={"concurrency": 1})
    rows = (ray.data.range(ROWS, override_num_blocks=ROWS // BATCH)
            .map_batches(counting_step(), fn_constructor_kwargs={"engine": engine}, batch_size=BATCH,
                         batch_format="pyarrow", **engine_actor_options(engine))
            .take_all())
    assert sorted(row["id"] for row in rows) == list(range(ROWS))  # every row answered once
    assert max(row["peak"] for row in rows) > 1
    failed = [row for row in rows if row["error"]]
    assert [row["id"] for row in failed] == [TOO_LONG] and "maximum context length" in failed[0]["error"]
    assert all(row["tokens"] == TOKENS for row in rows if not row["error"])


def waiting_step(marks: Path) -> type:
    """An EngineStep whose every call leaves its process id in `marks` and waits (60 s at most) until two processes
    have: it returns only once a second actor of the pool has work too. Built in a function so Ray ships the class by
    value to its actors."""
    import asyncio
    import os
    import time

    from engine.models.backends import Backend

    class Echo(Backend):
        model_id = "echo"

        def generate(self, requests):
            return [GenerationResult(text=request.prompt) for request in requests]  # never asked: no requests

    class WaitingStep(EngineStep):
        def __init__(self, engine):
            self._backend = Echo()

        def requests(self, rows):
            return []

        def record(self, row, result):
            pass

        def output(self, rows):
            return pa.Table.from_pylist(rows)

        async def __call__(self, batch):
            (marks / str(os.getpid())).touch()
            deadline = time.monotonic() + 60
            while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            actors = len(list(marks.iterdir()))
            return (await super().__call__(batch)).append_column("actors", pa.array([actors] * batch.num_rows))

    return WaitingStep


@pytest.mark.timeout(300)
def test_a_stream_read_in_blocks_larger_than_a_batch_gives_every_actor_batches(ray_cluster, tmp_path):
    import ray

    marks = tmp_path / "marks"
    marks.mkdir()
    engine = EngineConfig(model="unused", family="text", backend="vllm", device="cpu", num_cpus=0.25,
                          kv_cache_gib=0.0625, concurrency=2, batch_size=8, max_concurrent_batches=2)
    # One block of 64 rows, as a shard's record batch is read: without splitting it would be one task for one actor.
    rows = through_engine_pool(ray.data.range(64, override_num_blocks=1), waiting_step(marks), engine).take_all()
    assert sorted(row["id"] for row in rows) == list(range(64))
    assert len(list(marks.iterdir())) == 2 and all(row["actors"] == 2 for row in rows)
