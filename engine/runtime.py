"""Joining or starting Ray for a stage driver, and the environment its model actors need."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import ray
import yaml

from engine.config import ClusterConfig, EngineConfig


@contextlib.contextmanager
def ray_session(cluster: ClusterConfig) -> Iterator[None]:
    """Use the running Ray if this process already has one (tests, notebooks, `adapt run`), else join the configured
    cluster or start a local one. Only a Ray started here is shut down here."""
    if ray.is_initialized():
        yield
        return
    runtime_env = yaml.safe_load(open(cluster.runtime_env)) if cluster.runtime_env else None
    local = cluster.address is None
    ray.init(
        address=cluster.address,
        num_cpus=cluster.num_cpus if local else None,
        _temp_dir=cluster.temp_dir if local else None,
        runtime_env=runtime_env,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    try:
        yield
    finally:
        ray.shutdown()


def engine_actor_options(engine: EngineConfig) -> dict:
    """Ray resources and environment of one actor holding an inference engine."""
    env = {}
    if engine.device == "cpu" and engine.backend == "vllm":
        # One engine process per actor: starts in ~10 s instead of ~25 s and keeps a 2-core machine's process count
        # down; the CUDA build keeps vLLM's multiprocessing.
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # One batch in flight per actor: a generation batch takes seconds to minutes, so queueing a second one gains
    # nothing, and Ray Data's default queues several on whichever actor is ready first, leaving the rest idle.
    pool = ray.data.ActorPoolStrategy(size=engine.concurrency, max_tasks_in_flight_per_actor=1)
    options = {"num_cpus": engine.num_cpus, "num_gpus": engine.num_gpus or None, "compute": pool}
    if engine.resources:
        options["resources"] = dict(engine.resources)
    if env:
        options["runtime_env"] = {"env_vars": env}
    return options
