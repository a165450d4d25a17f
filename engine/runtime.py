"""Joining or starting Ray for a stage driver, and the environment its model actors need."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import ray
import yaml

from engine.config import ClusterConfig, EngineConfig
from engine.models.backends import Backend, GenerationRequest, GenerationResult


# How forwarded variables reach the workers. Ray's runtime_env `env_vars` would do it, but Ray logs every runtime env
# it creates, values included (runtime_env_agent.log), and secrets must not land in logs. So the values go to Ray's
# key-value store (in the cluster's GCS, never logged) under a random key; the runtime_env carries only that key and a
# setup hook, which every worker of the session runs before its first task, and which copies them into its
# environment. (`ray.experimental.internal_kv` is Ray's own store; Ray has no public one.)
FORWARDED_ENV_KEY = "ADAPT_FORWARDED_ENV_KEY"
KV_NAMESPACE = "adapt-engine"
SETUP_HOOK = "engine.runtime.apply_forwarded_env"
# A worker may start before the driver has stored the values (Ray starts some ahead of demand): it waits this long.
FORWARDED_ENV_WAIT_S = 60.0


@contextlib.contextmanager
def ray_session(cluster: ClusterConfig) -> Iterator[None]:
    """Use the running Ray if this process already has one (tests, notebooks, `adapt run`), else join the configured
    cluster or start a local one, with `cluster.forward_env` reaching every worker. Only a Ray started here is shut
    down here."""
    if ray.is_initialized():
        yield
        return
    from ray.experimental import internal_kv

    runtime_env = yaml.safe_load(open(cluster.runtime_env)) if cluster.runtime_env else {}
    forwarded = forwarded_env(cluster.forward_env)
    key = f"forward-env-{uuid.uuid4().hex}"
    if forwarded:
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), FORWARDED_ENV_KEY: key}
        runtime_env["worker_process_setup_hook"] = SETUP_HOOK
    local = cluster.address is None
    ray.init(
        address=cluster.address,
        num_cpus=cluster.num_cpus if local else None,
        _temp_dir=cluster.temp_dir if local else None,
        runtime_env=runtime_env or None,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    try:
        if forwarded:
            internal_kv._internal_kv_put(key, json.dumps(forwarded), namespace=KV_NAMESPACE)
        yield
    finally:
        if forwarded:
            internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)
        ray.shutdown()


def apply_forwarded_env() -> None:
    """Ray worker setup hook: put the variables the driver forwarded (see FORWARDED_ENV_KEY) into this worker's
    environment, before it runs any task or actor."""
    from ray.experimental import internal_kv

    key = os.environ.get(FORWARDED_ENV_KEY)
    if not key:
        return
    deadline = time.monotonic() + FORWARDED_ENV_WAIT_S
    while (value := internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the driver's forwarded environment ({key}) did not arrive within "
                               f"{FORWARDED_ENV_WAIT_S:.0f} s; was its session shut down?")
        time.sleep(0.05)
    os.environ.update(json.loads(value))


def forwarded_env(names: list[str]) -> dict[str, str]:
    """The named variables of this process's environment that every Ray worker of the session must see."""
    return {name: os.environ[name] for name in names if name in os.environ}


def engine_actor_options(engine: EngineConfig) -> dict:
    """Ray resources, environment and pool of the actors holding an inference engine (their callable: EngineStep)."""
    env = {}
    if engine.device == "cpu" and engine.backend == "vllm":
        # One engine process per actor: starts in ~10 s instead of ~25 s and keeps a 2-core machine's process count
        # down; the CUDA build keeps vLLM's multiprocessing.
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # Several batches in flight per actor: Ray Data sends an actor that many calls at once and runs them together on
    # its event loop, and the engine schedules the requests of all of them.
    in_flight = engine.batches_in_flight()
    pool = ray.data.ActorPoolStrategy(size=engine.concurrency, max_tasks_in_flight_per_actor=in_flight,
                                      max_concurrent_calls_per_actor=in_flight)
    options = {"num_cpus": engine.num_cpus, "num_gpus": engine.num_gpus or None, "compute": pool}
    if engine.resources:
        options["resources"] = dict(engine.resources)
    if env:
        options["runtime_env"] = {"env_vars": env}
    return options


def through_engine_pool(ds: ray.data.Dataset, step: type[EngineStep], engine: EngineConfig,
                        **constructor_kwargs: Any) -> ray.data.Dataset:
    """`ds` through a pool of `step` actors holding `engine`; `constructor_kwargs` go to the step with the engine."""
    # One block per batch: a Ray Data task is then one batch, and the pool hands each actor batches_in_flight() of
    # them, the least busy actor first. Blocks as read (a shard's record batch of 256 rows; Ray reads a small file into
    # one block) would make a task several batches, so the first actor ready would take most of a small stream.
    return (ds.repartition(target_num_rows_per_block=engine.batch_size)
            .map_batches(step, fn_constructor_kwargs={"engine": engine, **constructor_kwargs},
                         batch_size=engine.batch_size, batch_format="pyarrow", **engine_actor_options(engine)))


def pool_cost(pools: dict[str, EngineConfig], seconds: float, kept_tasks: int) -> dict[str, Any]:
    """What a stage's engine pools cost: accelerator-hours and CPU-core-hours, in all and per 1,000 kept tasks.

    A fixed-size Ray Data actor pool holds its actors' resources from the stream's start to its end, so each pool
    costs actors x resources per actor x the stream's seconds; reads, the driver and finalize are not counted (they
    hold no accelerator). None per 1,000 when nothing was kept."""
    gpus = sum(engine.concurrency * engine.num_gpus for engine in pools.values())
    cpus = sum(engine.concurrency * engine.num_cpus for engine in pools.values())
    hours = {"accelerator_hours": gpus * seconds / 3600, "cpu_core_hours": cpus * seconds / 3600}
    return {
        "pools": {name: {"actors": engine.concurrency, "gpus_per_actor": engine.num_gpus,
                         "cpus_per_actor": engine.num_cpus} for name, engine in pools.items()},
        "seconds": round(seconds, 2),
        **{key: round(value, 6) for key, value in hours.items()},
        "per_1k_kept_tasks": ({key: round(value * 1000 / kept_tasks, 6) for key, value in hours.items()}
                              if kept_tasks else None),
    }


class EngineStep(ABC):
    """A Ray Data callable holding an inference engine: rows in, requests to the engine, rows out with its answers.

    Its call is a coroutine, so Ray Data runs several at once on the actor's event loop (engine_actor_options says
    how many) while the engine answers them together. Subclasses say which rows ask what (`requests`), what an answer
    does to its row (`record`), and what a batch of rows becomes (`output`)."""

    _backend: Backend

    @abstractmethod
    def requests(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], GenerationRequest]]:
        """The rows that need the engine, each with its request (the others pass through unanswered)."""

    @abstractmethod
    def record(self, row: dict[str, Any], result: GenerationResult) -> None:
        """Update `row` in place with the engine's answer to its request (or why there is none)."""

    @abstractmethod
    def output(self, rows: list[dict[str, Any]]) -> pa.Table:
        """The batch's rows as the step's output table."""

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        asked = self.requests(rows)
        self._record_all(asked, await self._backend.agenerate([request for _, request in asked]) if asked else [])
        return self.output(rows)

    def process(self, rows: list[dict[str, Any]]) -> None:
        """What a call does to its rows, for rows in hand and a caller with no event loop (tests, notebooks)."""
        asked = self.requests(rows)
        self._record_all(asked, self._backend.generate([request for _, request in asked]) if asked else [])

    def _record_all(self, asked: list[tuple[dict[str, Any], GenerationRequest]],
                    results: list[GenerationResult]) -> None:
        for (row, _), result in zip(asked, results, strict=True):
            self.record(row, result)
