"""Joining or starting Ray for a stage driver, and the environment its model actors need."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator

import ray
import yaml

from engine.config import ClusterConfig, EngineConfig


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
